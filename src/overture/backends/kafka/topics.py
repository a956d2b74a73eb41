"""The topics Overture needs, created on demand and checked against each other.

All three topics of a namespace have the same partition count: partition ``p`` of the
changelog holds the state of the instances whose events arrive on partition ``p`` of the
events and internal topics. A count that disagrees is refused rather than "fixed", because
adding partitions moves keys and would strand instances on partitions that no longer
receive their events.
"""

from __future__ import annotations

import logging
import socket

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from ...errors import BrokerUnavailable, ConfigError
from .settings import DEFAULT_PARTITIONS, KafkaSettings

log = logging.getLogger("overture.kafka")


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
        compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
        new = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=settings.replication,
                config=compacted if name == settings.changelog_topic else {},
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
        raise BrokerUnavailable(
            f"Kafka at {settings.bootstrap} did not answer in {timeout:g}s: {exc.args[0].str()}"
        ) from exc
    out: dict[str, int | None] = {}
    for name in (settings.events_topic, settings.internal_topic, settings.changelog_topic):
        topic = metadata.topics.get(name)
        out[name] = None if topic is None or topic.error is not None else len(topic.partitions)
    return out


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
