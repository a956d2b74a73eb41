"""The topics Overture needs, created on demand and checked against each other.

All three topics of a namespace have the same partition count: partition ``p`` of the
changelog holds the state of the instances whose events arrive on partition ``p`` of the
events and internal topics. A count that disagrees is refused rather than "fixed", because
adding partitions moves keys and would strand instances on partitions that no longer
receive their events.

Retention. The changelog is compacted (``cleanup.policy=compact``: it holds live state,
which must never age out; a finished instance leaves it by tombstones). The topics whose
records age out, the events topic, the internal topic and every task topic
(``cleanup.policy=delete``), get ``retention.ms`` = :func:`log_retention_ms` of the
engines' retention: ``forever`` keeps them forever (-1), any other retention keeps them at
least :data:`RETENTION_FLOOR` (7 days), longer if the retention is longer. The floor is
there because Kafka deletes by age alone, whether or not a consumer has read the records
(SQLite deletes a record only once every consumer passed it): an engine group stopped over
a long weekend, or a worker group of a quiet queue, must still find its records when it
comes back, whatever ``--retention 0`` says about finished instances.

Existing topics are never changed: :func:`topic_report` describes their configs and
:func:`mismatches` says where they differ from what Overture would create (``overture run``
logs each as a warning when it joins the engine group; ``overture topics`` prints them).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from ... import protocol
from ...errors import BrokerUnavailable, ConfigError
from ...retention import describe_retention
from .settings import DEFAULT_PARTITIONS, KafkaSettings

log = logging.getLogger("overture.kafka")

RETENTION_FLOOR = timedelta(days=7)
"""The least ``retention.ms`` Overture gives a topic whose records age out (Kafka's own
default, ``log.retention.hours=168``): how long consumers may be away without losing
records they have not read."""

CHANGELOG_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
"""The changelog's configs: compacted, never deleted by age. (The lag keeps a minute of
updates uncompacted, so a follower a moment behind still sees each update.)"""

CHECKED = ("cleanup.policy", "retention.ms")
"""The configs an existing topic is checked for."""


def log_retention_ms(retention: timedelta | None) -> int:
    """``retention.ms`` of the events, internal and task topics for the engines'
    ``retention`` (``None``: forever, -1): at least :data:`RETENTION_FLOOR`."""
    if retention is None:
        return -1
    return int(max(retention, RETENTION_FLOOR) / timedelta(milliseconds=1))


def wanted_configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    """The configs Overture creates ``topic`` with (the changelog, or a topic whose
    records age out: events, internal, a task queue's)."""
    if topic == settings.changelog_topic:
        return dict(CHANGELOG_CONFIG)
    return {"cleanup.policy": "delete", "retention.ms": str(log_retention_ms(settings.retention))}


@dataclass(frozen=True, slots=True)
class TopicState:
    """An existing topic of the namespace as the cluster describes it."""

    topic: str
    partitions: int
    configs: dict[str, str]
    """The values of :data:`CHECKED` in effect (set on the topic or inherited from the
    broker)."""
    wanted: dict[str, str]
    """What Overture creates the topic with (:func:`wanted_configs`), of :data:`CHECKED`."""


@dataclass(frozen=True, slots=True)
class TopicMismatch:
    """A config of an existing topic that differs from what Overture would create."""

    topic: str
    name: str
    have: str
    want: str
    why: str
    """What the difference means."""
    bootstrap: str

    def __str__(self) -> str:
        fix = (
            f"kafka-configs.sh --bootstrap-server {self.bootstrap} --alter --entity-type "
            f"topics --entity-name {self.topic} --add-config {self.name}={self.want}"
        )
        return (
            f"topic {self.topic} has {self.name}={self.have} but Overture creates it with "
            f"{self.name}={self.want}: {self.why}. Overture does not change an existing "
            f"topic; to align it: {fix}"
        )


def mismatches(settings: KafkaSettings, states: list[TopicState]) -> list[TopicMismatch]:
    """Where the described topics differ from what Overture would create."""
    out = []
    kept = describe_retention(settings.retention)
    for state in states:
        changelog = state.topic == settings.changelog_topic
        for name in CHECKED:
            want = state.wanted.get(name)
            have = state.configs.get(name, "?")
            if want is None or have == want:
                continue
            if changelog:
                why = "the changelog holds live state: compacted, never deleted by age"
            elif name == "cleanup.policy":
                why = "compaction by key would drop events that no instance has read yet"
            else:
                why = _retention_why(int(have) if _is_int(have) else None, int(want), kept)
            out.append(TopicMismatch(state.topic, name, have, want, why, settings.bootstrap))
    return out


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _retention_why(have: int | None, want: int, kept: str) -> str:
    if have is None:
        return f"it is derived from --retention {kept}"
    what = f"--retention {kept} keeps them " + ("forever" if want == -1 else _ms(want))
    floor = describe_retention(RETENTION_FLOOR)
    reason = f"(never less than {floor}, so that stopped consumers find what they have not read)"
    if have == -1:
        return f"records are kept forever, but {what}"
    return f"records are deleted after {_ms(have)}, but {what}" + (
        "" if want == -1 else f" {reason}"
    )


def _ms(millis: int) -> str:
    return describe_retention(timedelta(milliseconds=millis))


def topic_report(settings: KafkaSettings, *, timeout: float = 15.0) -> list[TopicState]:
    """The namespace's existing topics (events, internal, changelog, task topics) with
    their partition counts and the configs of :data:`CHECKED` in effect.

    Raises:
        BrokerUnavailable: the cluster did not answer within ``timeout`` seconds, or
            refused to describe the configs.
    """
    admin = AdminClient(settings.config())
    _check_resolvable(settings.bootstrap)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unavailable(settings, timeout, exc) from exc
    prefix = protocol.tasks_topic(settings.namespace, "")
    names = [settings.events_topic, settings.internal_topic, settings.changelog_topic]
    names += sorted(n for n in metadata.topics if n.startswith(prefix))
    present = {
        n: len(t.partitions)
        for n in names
        if (t := metadata.topics.get(n)) is not None and t.error is None
    }
    if not present:
        return []
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in present]
    out = []
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot describe the configs of topic {resource.name}: {exc.args[0].str()}"
            ) from exc
        name = resource.name
        configs = {c: entries[c].value for c in CHECKED if c in entries}
        wanted = {c: v for c, v in wanted_configs(settings, name).items() if c in CHECKED}
        if name == settings.changelog_topic:
            wanted.pop("retention.ms", None)  # compact only: age deletes nothing
        out.append(TopicState(name, present[name], configs, wanted))
    out.sort(key=lambda s: names.index(s.topic))
    return out


def warn_mismatches(settings: KafkaSettings) -> list[TopicMismatch]:
    """Log a warning for each existing topic config that differs from what Overture
    would create (an engine's start); the topics are left as they are. A cluster that
    cannot be asked is logged too, and the engine goes on."""
    try:
        found = mismatches(settings, topic_report(settings))
    except BrokerUnavailable as exc:
        log.warning("could not check the configs of the topics: %s", exc)
        return []
    for mismatch in found:
        log.warning("%s", mismatch)
    return found


def ensure_topics(settings: KafkaSettings, *, timeout: float = 15.0) -> int:
    """Create the namespace's missing topics; return their partition count.

    Raises:
        BrokerUnavailable: the cluster did not answer within ``timeout`` seconds.
        ConfigError: existing topics disagree with each other or with the URL.
    """
    admin = AdminClient(settings.config())
    counts = _counts(admin, settings, timeout)
    existing = {n for n, c in counts.items() if c is not None}
    wanted = settings.partitions
    known = {c for c in counts.values() if c is not None}
    if len(known) > 1:
        detail = ", ".join(f"{n} has {c}" for n, c in counts.items() if c is not None)
        raise ConfigError(f"the topics of namespace {settings.namespace!r} disagree: {detail}")
    if known and wanted is not None and wanted not in known:
        (have,) = known
        raise ConfigError(
            f"the topics of namespace {settings.namespace!r} have {have} partitions but "
            f"{wanted} were asked for; their state is laid out for {have}, so use "
            f"?partitions={have} or a new namespace"
        )
    count = next(iter(known)) if known else (wanted or DEFAULT_PARTITIONS)
    missing = [n for n in counts if n not in existing]
    if missing:
        new = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=settings.replication,
                config=wanted_configs(settings, name),
            )
            for name in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=timeout).items():
            try:
                future.result(timeout)
                log.info("created topic %s (%d partitions)", name, count)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race
                    raise ConfigError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
    return count


def _counts(admin: AdminClient, settings: KafkaSettings, timeout: float) -> dict[str, int | None]:
    _check_resolvable(settings.bootstrap)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unavailable(settings, timeout, exc) from exc
    out: dict[str, int | None] = {}
    for name in (settings.events_topic, settings.internal_topic, settings.changelog_topic):
        topic = metadata.topics.get(name)
        out[name] = None if topic is None or topic.error is not None else len(topic.partitions)
    return out


def _unavailable(settings: KafkaSettings, timeout: float, exc: KafkaException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"Kafka at {settings.bootstrap} did not answer in {timeout:g}s: {exc.args[0].str()}"
    )


def _check_resolvable(bootstrap: str) -> None:
    """Fail at once when no bootstrap host resolves (a typo), instead of after librdkafka's
    whole metadata timeout with "Broker transport failure".

    Raises:
        BrokerUnavailable: not one of the hosts resolves (with the resolver's reason).
    """
    reasons = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")  # an IPv6 literal, [::1]:9092
        if not host:
            return  # not host:port; leave the verdict to librdkafka
        try:
            socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            reasons.append(f"{host!r}: {getattr(exc, 'strerror', None) or exc}")
        else:
            return
    problems = "; ".join(reasons)
    raise BrokerUnavailable(f"cannot resolve the Kafka host(s) of {bootstrap}: {problems}")
