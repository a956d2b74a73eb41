"""``kafka://``: the backend as clients see it, and the entry point for engines.

- ``log.append`` publishes with an idempotent producer (``acks=all``) and returns once the
  cluster acknowledged every record, or raises :class:`BrokerUnavailable`.
- ``log.read`` reads a partition of the events topic by position.
- ``store`` answers queries from the changelog: it follows every changelog partition into
  a local copy, catching up to the current end before each answer. It is read-only (a
  :class:`~overture.ports.StateView`); engines commit through the partitions that
  :meth:`KafkaBackend.claim` hands them.
- ``tasks`` is the task queues as workers take them: a consumer in each queue's worker
  group (``taskqueue.py``); the engines publish the attempts (``group.Committer``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer, TopicPartition

from ... import protocol
from ...errors import BrokerUnavailable, ConfigError, EventError
from ...ports import (
    ActivityRow,
    DeadLetter,
    EngineBackend,
    InstanceQuery,
    InstanceRow,
    InstanceSnapshot,
    NewRecord,
    Record,
    WaitRow,
    WorkRow,
)
from ...protocol import FINAL
from ...retention import DEFAULT_RETENTION
from ..memory import MemoryState
from .changelog import restore
from .group import CAPABILITIES, Membership
from .queues import TaskTopics
from .reading import high_watermarks, read_changelog, read_to_end, reader, record_of
from .settings import KafkaSettings, parse
from .taskqueue import KafkaTaskQueue
from .topics import ensure_topics, warn_mismatches
from .writing import place_record, send

SEND_TIMEOUT = 30.0
_MAX_MESSAGE = 1_000_000  # librdkafka's default message.max.bytes


class KafkaBackend:
    """A Kafka cluster namespace (see ``overture.backends.kafka.settings``)."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        url: str,
        *,
        partitions: int | None = None,
        retention: timedelta | None = DEFAULT_RETENTION,
    ) -> None:
        """Open the namespace, creating its missing topics.

        Args:
            partitions: partitions of the topics to create (existing ones must match).
            retention: how long the engines keep finished instances (``None``: forever):
                the topics this creates get a ``retention.ms`` derived from it, and an
                engine's :meth:`claim` checks the existing topics against it
                (``topics.py``).
        """
        self.settings = parse(url, partitions=partitions, retention=retention)
        self.url = url
        self.partitions = ensure_topics(self.settings)
        self.log = KafkaLog(self.settings, self.partitions)
        self.store = ChangelogView(self.settings, self.partitions)
        self.tasks = KafkaTaskQueue(
            self.settings, self.partitions, TaskTopics(self.settings, self.partitions)
        )

    def delete_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        """Refused: a partition's dead letters are its engine's changelog, which only
        that engine's transactional producer writes (``Client.delete_dead_letters``
        asks the engines with ``overture.dlq.delete``)."""
        raise ConfigError(
            "on Kafka the engines own the dead letters (their changelog): ask them with an "
            f"{protocol.DLQ_DELETE} event (Client.delete_dead_letters does)"
        )

    def claim(
        self,
        group_key: str,
        on_assign: Callable[[Mapping[int, EngineBackend]], None],
        on_revoke: Callable[[list[int]], None],
        on_failure: Callable[[BaseException], None],
    ) -> Membership:
        """Become a member of the engine group (see :class:`Membership`): each assigned
        partition is handed over as a :class:`PartitionBackend`. First the existing topics
        are checked against what this backend would create them with: each difference is
        logged as a warning, and nothing is changed (``topics.warn_mismatches``)."""
        warn_mismatches(self.settings)
        membership = Membership(
            self.settings, self.partitions, group_key, on_assign, on_revoke, on_failure
        )
        membership.start()
        return membership

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` (from a follower thread) with the ids of the instances that
        committed changelog records show finished. The follower starts at the changelog's
        current end (read before this returns, so a caller that reads the store next misses
        nothing) and fetches as the broker delivers records: no polling of the store."""
        consumer = reader(self.settings, "results", committed=True)
        topic = self.settings.changelog_topic
        try:
            ends = high_watermarks(consumer, topic, list(range(self.partitions)))
        except BaseException:
            consumer.close()
            raise
        consumer.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        stop = threading.Event()

        def follow() -> None:
            try:
                while not stop.is_set():
                    # consume(n, timeout) waits for n records or the timeout: wait for
                    # the first only, then take what else is there at once (waiting for
                    # 1,000 made every result wait 200 ms at low load: W5's 1x1 on Kafka)
                    messages = consumer.consume(1, 0.2)
                    if messages:
                        messages.extend(consumer.consume(999, 0))
                    finished = [iid for m in messages if (iid := _finished(m.key(), m.value()))]
                    if finished:
                        wake(finished)
            finally:
                consumer.close()

        thread = threading.Thread(target=follow, name="overture-changelog-results", daemon=True)
        thread.start()

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=2.0)

        return unsubscribe

    def close(self) -> None:
        self.tasks.close()
        self.log.close()
        self.store.close()


_STATUS = InstanceRow.__slots__.index("status")


def _finished(key: bytes | None, value: bytes | None) -> str | None:
    """The instance id of a changelog record that stores a finished instance."""
    if key is None or value is None or not key.startswith(b'["i",'):
        return None
    if orjson.loads(value)[_STATUS] not in FINAL:
        return None
    iid = orjson.loads(key)[1]
    return iid if isinstance(iid, str) else None


def _event_id(value: bytes) -> object:
    """The ``id`` of a record in structured form (``None`` if it has none)."""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return envelope.get("id") if isinstance(envelope, dict) else None


class KafkaLog:
    """The events topic, for clients."""

    def __init__(self, settings: KafkaSettings, partitions: int) -> None:
        self._settings = settings
        self._partitions = partitions
        self._producer: Producer | None = None
        self._reader: Any = None
        self._lock = threading.Lock()
        self._rr = 0

    @property
    def partitions(self) -> int:
        return self._partitions

    def append(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        """Publish and wait for the acknowledgements.

        Raises:
            EventError: a record is larger than a Kafka message may be (nothing written).
            BrokerUnavailable: not acknowledged within 30 s (nothing is known to be written;
                sending again is safe: engines start one instance per event id).
        """
        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    self._settings.config(
                        **{
                            "enable.idempotence": True,
                            "acks": "all",
                            "linger.ms": 1,
                            "message.timeout.ms": int(SEND_TIMEOUT * 1000),
                        }
                    )
                )
            producer = self._producer
            results: list[tuple[int, int] | None] = [None] * len(records)
            errors: list[str] = []

            def delivered(index: int) -> Callable[[Any, Any], None]:
                def report(error: Any, message: Any) -> None:
                    if error is not None:
                        errors.append(error.str())
                    else:
                        results[index] = (message.partition(), message.offset())

                return report

            placed = []
            for record in records:
                self._rr += 1
                placed.append(place_record(record, self._partitions, self._rr))
            # Checked for all before producing any: the producer refuses a message over
            # its limit only when it comes to it, after the ones before it were queued.
            limit = int(self._settings.config().get("message.max.bytes", _MAX_MESSAGE))
            for record, one in zip(records, placed, strict=True):
                if one.size > limit:
                    raise EventError(
                        f"event {record.event_id or '(raw bytes)'} is {one.size:,} bytes as a "
                        f"Kafka message, over Kafka's limit of {limit:,} bytes "
                        "(the producer's message.max.bytes); nothing was written"
                    )
            topic = self._settings.events_topic
            for index, one in enumerate(placed):
                send(
                    producer,
                    topic,
                    one.value,
                    one.key,
                    one.partition,
                    one.headers,
                    delivered(index),
                )
            left = producer.flush(SEND_TIMEOUT + 5)
            if left or errors:
                reason = errors[0] if errors else f"{left} record(s) not acknowledged in time"
                raise BrokerUnavailable(
                    f"sending to Kafka at {self._settings.bootstrap} failed: {reason}"
                )
            return results

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        with self._lock:
            if self._reader is None:
                self._reader = reader(self._settings, "client")
            return [
                record_of(message, partition)
                for message in read_to_end(
                    self._reader, self._settings.events_topic, {partition: offset}, limit=limit
                )
            ]

    def end_offset(self, partition: int) -> int:
        with self._lock:
            if self._reader is None:
                self._reader = reader(self._settings, "client")
            return high_watermarks(self._reader, self._settings.events_topic, [partition])[
                partition
            ]

    def find_event(self, event_id: str) -> Record | None:
        """A scan of the whole topic: Kafka has no index by event id
        (``finds_events_by_id`` is False; for tests and tools)."""
        for partition in range(self._partitions):
            offset = 0
            while batch := self.read(partition, offset, 1000):
                for record in batch:
                    # parsed, not searched for as text: an id may need escapes in JSON
                    if record.error is None and _event_id(record.value) == event_id:
                        return record
                offset = batch[-1].offset + 1
        return None

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        return lambda: None  # clients poll (wakeups are only hints by contract)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(SEND_TIMEOUT)
                self._producer = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None


class ChangelogView:
    """Read-only engine state for clients, followed from the changelog topic."""

    def __init__(self, settings: KafkaSettings, partitions: int) -> None:
        self._settings = settings
        self._partitions = partitions
        self._state = MemoryState()
        self._positions = dict.fromkeys(range(partitions), 0)
        self._where: dict[str, int] = {}  # dead letter id -> partition
        self._lock = threading.Lock()
        self._reader: Any = None

    def refresh(self) -> None:
        """Catch up with the changelog's current end."""
        with self._lock:
            if self._reader is None:
                self._reader = reader(self._settings, "view")
            try:
                by_partition = read_changelog(
                    self._reader, self._settings.changelog_topic, self._positions
                )
            except KafkaException as exc:
                raise BrokerUnavailable(str(exc)) from exc
            for p, records in by_partition.items():
                restore(records, self._state)
                for key, _ in records:
                    if key.startswith(b'["d",'):  # a dead letter: remember where it lives
                        self._where[orjson.loads(key)[1]] = p

    def offsets(self, group: str) -> dict[int, int]:
        self.refresh()
        return self._state.offsets(group)

    def instance(self, instance_id: str) -> InstanceRow | None:
        self.refresh()
        return self._state.instance(instance_id)

    def existing(self, instance_ids: Collection[str]) -> set[str]:
        self.refresh()
        return self._state.existing(instance_ids)

    def journal(self, instance_id: str) -> list[dict[str, Any]]:
        self.refresh()
        return self._state.journal(instance_id)

    def snapshots(self, instance_ids: Collection[str]) -> dict[str, InstanceSnapshot]:
        self.refresh()
        return self._state.snapshots(instance_ids)

    def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[InstanceRow]:
        self.refresh()
        return self._state.instances(process=process, status=status, limit=limit)

    def find_instances(self, query: InstanceQuery) -> list[InstanceRow]:
        self.refresh()
        return self._state.find_instances(query)

    def count_instances(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        self.refresh()
        return self._state.count_instances(process=process)

    def instance_activity(self, since: float, width: float) -> list[ActivityRow]:
        self.refresh()
        return self._state.instance_activity(since, width)

    def active_instances(self) -> list[tuple[str, str | None]]:
        self.refresh()
        return self._state.active_instances()

    def waits(self) -> list[WaitRow]:
        self.refresh()
        return self._state.waits()

    def expired(self, before: float, limit: int) -> tuple[list[str], float | None]:
        self.refresh()
        return self._state.expired(before, limit)

    def work(self) -> list[WorkRow]:
        self.refresh()
        return self._state.work()

    def dead_letters(self) -> list[DeadLetter]:
        self.refresh()
        return [self._placed(d) for d in self._state.dead_letters()]

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        self.refresh()
        letter = self._state.dead_letter(dead_letter_id)
        return None if letter is None else self._placed(letter)

    def expired_dead_letters(self, before: float, limit: int) -> tuple[list[str], float | None]:
        self.refresh()
        return self._state.expired_dead_letters(before, limit)

    def get(self, namespace: str, key: bytes) -> bytes | None:
        self.refresh()
        return self._state.get(namespace, key)

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        self.refresh()
        return self._state.scan(namespace, prefix)

    def _placed(self, letter: DeadLetter) -> DeadLetter:
        """The letter with the partition whose engine holds it (where a replay must go)."""
        where = self._where.get(letter.id)
        return letter if where is None else replace(letter, partition=where)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
