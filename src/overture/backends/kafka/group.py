"""Engine side of the Kafka backend: group membership, fetching, transactional commits.

One engine process is one member of the consumer group ``<namespace>.engine``. Kafka's
range assignor gives each member the same partition numbers of the events and internal
topics (they have equal counts), so partition ``p`` is a unit: its events, its re-keyed
events, and its state (changelog partition ``p``). Per assigned partition the runtime runs
one engine on a :class:`PartitionBackend`:

- its ``log`` reads what the :class:`Membership`'s single consumer fetched for ``p``
  (logical partition ``p``: the events topic; ``partitions + p``: the internal topic);
- its ``store`` is a local :class:`MemoryState` rebuilt from changelog partition ``p`` on
  assignment, and its ``commit`` is one Kafka transaction of the partition's own
  producer (transactional id ``<group>.p<N>``): the batch's emitted events, its state
  changes as changelog records, and its input offsets as a changelog record too.

Fencing is by transactional id, the Kafka Streams "exactly_once" (v1) way: the member that
takes a partition over initializes the partition's producer, which fences the previous
owner and aborts the transaction it left open, *before* the state is restored. (KIP-447's
``send_offsets_to_transaction`` with group metadata was the first design; librdkafka 2.x
can block in it forever once the group coordinator moves, e.g. over a broker restart —
confluentinc/librdkafka#5456 — so offsets live in the changelog and the group's
committed offsets are only updated afterwards, for lag monitoring.)

The local state is updated, and fetched records are released, only after the transaction
committed, so after a failed commit the partition's engine restarts from exactly what
Kafka holds, re-reading the records it had taken from the buffer.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from ...errors import BrokerUnavailable, Fenced
from ...ports import Batch, Capabilities, EngineBackend, Record
from ..memory import MemoryState
from .changelog import records_of, restore
from .queues import STRUCTURED_HEADERS, TaskTopics
from .reading import read_changelog, reader, record_of
from .settings import KafkaSettings
from .writing import produce_record, send

log = logging.getLogger("overture.kafka")

CAPABILITIES = Capabilities(
    dedups_event_ids=False,  # engines start one instance per trigger id all the same
    finds_events_by_id=False,  # no index by event id: find_event scans the topic
    local_lock=False,  # the group assigns each partition to one member
    commit="thread",  # a transaction waits for the cluster
    partitioned=True,
    remote=True,
)
"""What ``kafka://`` does (the client side and every partition's engine side)."""


PAUSE_AT = 20_000
"""Buffered records of one partition at which fetching it pauses (backpressure)."""
RESUME_AT = 5_000


class _Buffer:
    """Records fetched for one logical partition and not yet committed by its engine.

    Records stay until a commit covers them (``trim``), so an engine that restarts after
    a failed commit reads them again from its last committed offset without the consumer
    having to seek.
    """

    def __init__(self, start: int) -> None:
        self.records: list[Record] = []
        self.head = 0  # records[:head] are committed, awaiting compaction
        self.next = start
        self.paused = False
        self.wakers: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self.records) - self.head

    def read(self, offset: int, limit: int) -> list[Record]:
        start = bisect.bisect_left(self.records, offset, lo=self.head, key=_offset)
        return self.records[start : start + limit]

    def trim(self, committed: int) -> None:
        self.head = bisect.bisect_left(self.records, committed, lo=self.head, key=_offset)
        if self.head > 1024 and self.head * 2 > len(self.records):
            del self.records[: self.head]
            self.head = 0

    def clear(self, start: int) -> None:
        self.records.clear()
        self.head = 0
        self.next = start
        self.paused = False


def _offset(record: Record) -> int:
    return record.offset


class Membership:
    """This process's membership in the engine group: one consumer fetching every assigned
    partition in a background thread, and a :class:`PartitionBackend` (with its own
    transactional producer) per assigned partition.

    ``on_assign(backends)`` and ``on_revoke(partitions)`` are called from the fetching
    thread; ``on_revoke`` must return only once the partitions' engines have stopped
    (their last commits settled), because another member may take them over right after.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        partitions: int,
        group_key: str,
        on_assign: Callable[[Mapping[int, EngineBackend]], None],
        on_revoke: Callable[[list[int]], None],
        on_failure: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        self.group_key = group_key
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._buffers: dict[int, _Buffer] = {}
        self._backends: dict[int, PartitionBackend] = {}
        self._requests: deque[Callable[[], None]] = deque()
        self._stop = threading.Event()
        self._fetched: dict[int, int] = {}
        self.task_topics = TaskTopics(settings, partitions)
        self._consumer = Consumer(
            settings.config(
                **{
                    "group.id": settings.group,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    "partition.assignment.strategy": "range",
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                    "error_cb": self._error,
                }
            )
        )
        self._watermarks: Any = None  # a second and a third consumer for caught_up()
        self._stable: Any = None
        self._thread = threading.Thread(target=self._run, name="overture-kafka-fetch", daemon=True)
        self._last_error = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._consumer.subscribe(
            [self.settings.events_topic, self.settings.internal_topic],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )
        self._thread.start()

    def close(self) -> None:
        """Leave the group (blocking: revocation waits for the engines) and close."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        for extra in (self._watermarks, self._stable):
            if extra is not None:
                extra.close()

    @property
    def assigned(self) -> list[int]:
        with self._lock:
            return sorted(self._backends)

    # -- called by the partitions' engines (any thread) ------------------------------------

    def read(self, logical: int, offset: int, limit: int) -> list[Record]:
        with self._lock:
            buffer = self._buffers.get(logical)
            return [] if buffer is None else buffer.read(offset, limit)

    def committed(self, offsets: dict[int, int]) -> None:
        """A partition's engine committed up to ``offsets``: drop what they cover, and
        tell the group (for lag monitoring only: positions come from the changelog)."""
        if offsets:
            tps = [self._tp(lp) for lp in offsets]
            for tp in tps:
                tp.offset = offsets[self._logical(tp.topic, tp.partition)]
            self._requests.append(functools.partial(self._commit_offsets, tps))
        with self._lock:
            for logical, offset in offsets.items():
                buffer = self._buffers.get(logical)
                if buffer is None:
                    continue
                buffer.trim(offset)
                if buffer.paused and len(buffer) < RESUME_AT:
                    buffer.paused = False
                    self._requests.append(
                        functools.partial(self._consumer.resume, [self._tp(logical)])
                    )

    def end_offset(self, logical: int) -> int:
        with self._lock:
            buffer = self._buffers.get(logical)
            return 0 if buffer is None else buffer.next

    def subscribe(self, logical: int, wake: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            buffer = self._buffers.setdefault(logical, _Buffer(0))
            buffer.wakers.append(wake)

        def unsubscribe() -> None:
            with self._lock:
                if wake in buffer.wakers:
                    buffer.wakers.remove(wake)

        return unsubscribe

    def _commit_offsets(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            owned = {lp for p in self._backends for lp in (p, self.partitions + p)}
        tps = [tp for tp in tps if self._logical(tp.topic, tp.partition) in owned]
        if tps:
            self._consumer.commit(offsets=tps, asynchronous=True)

    def caught_up(self) -> bool:
        """Whether everything committed to the assigned partitions so far was fetched, and
        the changelog records of the assigned partitions are visible to every reader.

        A transaction reports its commit before the cluster has written its markers, and
        until then the last stable offset does not show its records yet: the fetch is
        compared with the high watermark, and the changelog's last stable offset must have
        reached its high watermark (a client's view reads to the last stable offset, so
        without this it could miss the engines' last commit)."""
        with self._lock:
            owned = list(self._backends)
            logical = [lp for p in owned for lp in (p, self.partitions + p)]
            fetched = {lp: self._fetched.get(lp, -1) for lp in logical}
        if self._watermarks is None:
            self._watermarks = reader(self.settings, "watermarks", committed=False)
            self._stable = reader(self.settings, "stable")
        changelog = self.settings.changelog_topic
        try:
            for lp, fetched_to in fetched.items():
                if fetched_to < self._end(self._watermarks, self._tp(lp)):
                    return False
            for p in owned:
                tp = TopicPartition(changelog, p)
                if self._end(self._stable, tp) < self._end(self._watermarks, tp):
                    return False
        except KafkaException:
            return False
        return True

    @staticmethod
    def _end(consumer: Any, tp: TopicPartition) -> int:
        """The end of ``tp`` as ``consumer`` sees it (its isolation level decides which)."""
        return int(consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1])

    # -- the fetching thread -------------------------------------------------------------------

    def _tp(self, logical: int) -> TopicPartition:
        if logical < self.partitions:
            return TopicPartition(self.settings.events_topic, logical)
        return TopicPartition(self.settings.internal_topic, logical - self.partitions)

    def _logical(self, topic: str, partition: int) -> int:
        return partition if topic == self.settings.events_topic else self.partitions + partition

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while self._requests:
                    try:
                        self._requests.popleft()()
                    except KafkaException as exc:  # e.g. resuming a revoked partition
                        log.warning("Kafka consumer request failed: %s", exc)
                # consume(n, timeout) waits for n records or the timeout: wait for the
                # first only, then take what has already arrived (a lone event would
                # otherwise sit here for the whole timeout)
                messages = self._consumer.consume(1, 0.05)
                if messages:
                    messages.extend(self._consumer.consume(499, 0))
                woken: set[int] = set()
                self._take(messages, woken)
                wakers: list[Callable[[], None]] = []
                with self._lock:
                    for lp in woken:
                        buffer = self._buffers[lp]
                        wakers.extend(buffer.wakers)
                        if not buffer.paused and len(buffer) > PAUSE_AT:
                            buffer.paused = True
                            self._consumer.pause([self._tp(lp)])
                for wake in wakers:
                    wake()
        except:  # noqa: E722 - confluent also raises KafkaError, which is no BaseException
            # No partition can make progress without the fetcher: say so, loudly, rather
            # than look alive (``overture run`` exits; a supervisor restarts it).
            log.exception("the Kafka fetcher failed")
            self._on_failure(BrokerUnavailable(f"the Kafka fetcher failed: {sys.exc_info()[1]}"))
        finally:
            try:
                self._consumer.close()  # leaves the group; revocation runs _revoked
            except Exception:
                log.exception("closing the Kafka consumer")

    def _take(self, messages: list[Any], woken: set[int]) -> None:
        """Buffer the fetched messages' records (made outside the lock, appended under
        it once per fetch), note the ends of partitions, report errors.

        Records and ends are applied in the order fetched: an end of partition never
        shows in ``_fetched`` before the records it follows are in the buffer
        (``caught_up`` trusts ``_fetched``; ``has_unread`` reads the buffer)."""
        taken: list[tuple[int, Record | None, int]] = []
        for message in messages:
            error = message.error()
            if error is None:
                lp = self._logical(message.topic(), message.partition())
                taken.append((lp, record_of(message, lp), 0))
            elif error.code() == KafkaError._PARTITION_EOF:
                lp = self._logical(message.topic(), message.partition())
                taken.append((lp, None, message.offset()))
            else:
                self._error(error)
        if not taken:
            return
        with self._lock:
            buffers, fetched = self._buffers, self._fetched
            for lp, record, end in taken:
                if record is None:  # the end of the partition
                    fetched[lp] = max(fetched.get(lp, -1), end)
                    woken.add(lp)
                    continue
                buffer = buffers.get(lp)
                if buffer is None or lp not in fetched:
                    continue  # no longer (or not yet) assigned
                buffer.records.append(record)
                buffer.next = record.offset + 1
                fetched[lp] = max(fetched[lp], record.offset + 1)
                woken.add(lp)

    def _assigned(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        partitions = sorted({tp.partition for tp in tps if tp.topic == self.settings.events_topic})
        log.info("assigned partitions %s", partitions)
        backends = self._prepare(partitions)
        for tp in tps:
            lp = self._logical(tp.topic, tp.partition)
            start = backends[tp.partition].store.offsets(self.group_key).get(lp)
            tp.offset = OFFSET_BEGINNING if start is None else start
            with self._lock:
                self._buffers.setdefault(lp, _Buffer(0)).clear(start or 0)
                self._fetched[lp] = -1
        consumer.assign(tps)
        # librdkafka keeps a partition's pause across a rebalance that assigns it here
        # again; its buffer starts over unpaused (clear), and so must the fetching, or a
        # partition paused by a backlog when the group rebalanced would never be read again
        consumer.resume(tps)
        with self._lock:
            self._backends.update(backends)
        self._on_assign(backends)

    def _prepare(self, partitions: list[int]) -> dict[int, PartitionBackend]:
        """Producers (fencing the previous owners) and restored state for newly assigned
        partitions; retried while the cluster is unavailable (say, restarting)."""
        pause = 0.5
        while True:
            try:
                backends = {p: PartitionBackend(self, p) for p in partitions}
                restore_partitions(self.settings, {p: b.store for p, b in backends.items()})
                return backends
            except BrokerUnavailable as error:
                if self._stop.is_set():
                    raise
                log.error(
                    "preparing partitions %s: %s; retrying in %.1fs", partitions, error, pause
                )
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _revoked(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        partitions = sorted({tp.partition for tp in tps if tp.topic == self.settings.events_topic})
        log.info("partitions %s revoked", partitions)
        with self._lock:
            owned = [p for p in partitions if p in self._backends]
        if owned:
            self._on_revoke(owned)
        with self._lock:
            gone = [self._backends.pop(p) for p in partitions if p in self._backends]
            for p in partitions:
                for lp in (p, self.partitions + p):
                    self._fetched.pop(lp, None)
                    buffer = self._buffers.get(lp)
                    if buffer is not None:
                        buffer.clear(0)
        for backend in gone:
            backend.close()

    def _error(self, error: KafkaError) -> None:
        # librdkafka retries on its own; say so once in a while instead of on every attempt
        now = time.monotonic()
        if now - self._last_error > 10 or error.fatal():
            self._last_error = now
            log.error("Kafka at %s: %s (retrying)", self.settings.bootstrap, error.str())


def restore_partitions(settings: KafkaSettings, states: dict[int, MemoryState]) -> None:
    """Rebuild the state of some partitions from the changelog into ``states``.

    Call it only once the partitions' producers are initialized: that aborts (or lets
    finish) a transaction their previous owner left open, so nothing restored here can
    be overtaken by a late commit."""
    partitions = sorted(states)
    if not partitions:
        return
    started = time.monotonic()
    consumer = reader(settings, "restore")
    try:
        pending = read_changelog(consumer, settings.changelog_topic, dict.fromkeys(partitions, 0))
    finally:
        consumer.close()
    for p, records in pending.items():
        restore(records, states[p])
    count = sum(len(records) for records in pending.values())
    log.info(
        "restored partitions %s from %d changelog records in %.2fs",
        list(partitions),
        count,
        time.monotonic() - started,
    )


class Committer:
    """The transactional producer of one partition.

    Its transactional id is the partition's (``<group>.p<N>``), the same in every member:
    the member that takes a partition over initializes it, which fences the previous
    owner (a zombie's commits fail) and aborts the transaction that owner left open.

    A batch's task attempts (``Batch.tasks``) go to their queues' topics in the same
    transaction (``queues.py``), so a worker sees an attempt only once the batch that
    scheduled it committed. An ended attempt (``None``) produces nothing: it carries no
    queue to address a marker to, and the engine drops any result it receives for it.
    """

    def __init__(
        self, settings: KafkaSettings, partitions: int, partition: int, topics: TaskTopics
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        self.partition = partition
        self.topics = topics
        self._transactional_id = f"{settings.group}.p{partition}"
        self._rr = itertools.count()
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        producer = Producer(
            self.settings.config(
                **{
                    "transactional.id": self._transactional_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    # an abandoned transaction blocks read_committed readers of its
                    # partitions until the next owner's init aborts it or it times out
                    "transaction.timeout.ms": 10_000,
                }
            )
        )
        try:
            producer.init_transactions(60)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"Kafka at {self.settings.bootstrap}: cannot start transactions for partition "
                f"{self.partition}: {exc.args[0].str()}"
            ) from exc
        return producer

    def commit(self, batch: Batch, state: MemoryState | None = None) -> None:
        """One transaction: the batch's events, its changelog records, its offsets (in the
        changelog); ``state`` (the partition's, before the batch) names the keys of the
        instances it deletes. Raises :class:`BrokerUnavailable` if it did not commit."""
        producer = self._producer
        settings = self.settings
        # before the transaction begins: this may create a queue's topic (or refuse a
        # queue name no topic can have), and nothing is open to abort if it fails
        tasks = [
            (task, self.topics.place(task.queue, task.id))
            for task in batch.tasks.values()
            if task is not None
        ]
        try:
            producer.begin_transaction()
            for record in batch.appends:
                topic = settings.internal_topic if record.internal else settings.events_topic
                produce_record(producer, topic, record, self.partitions, next(self._rr))
            for task, (topic, partition) in tasks:
                send(producer, topic, task.request, task.id.encode(), partition, STRUCTURED_HEADERS)
            for key, value in records_of(batch, state):
                send(producer, settings.changelog_topic, value, key, self.partition)
            self._finish(producer)
        except BaseException as exc:
            # Leave a producer that can begin the next transaction (abort this one, or
            # replace the producer) -- unless another member fenced us: then a new
            # producer with the partition's id would fence *it*, and the two would take
            # the partition from each other in turn.
            error = exc.args[0] if isinstance(exc, KafkaException) else None
            reason = error.str() if error is not None else repr(exc)
            if error is not None and _is_fenced(error):
                raise self._fenced(reason) from exc
            if error is not None and error.fatal():
                log.error(
                    "the producer of partition %d failed (%s): renewing it", self.partition, reason
                )
                self.renew()
            else:
                try:
                    producer.abort_transaction(30)
                except KafkaException as abort:
                    if _is_fenced(abort.args[0]):
                        raise self._fenced(abort.args[0].str()) from exc
                    log.error(
                        "aborting a transaction failed (%s): renewing the producer",
                        abort.args[0].str(),
                    )
                    self.renew()
            raise BrokerUnavailable(f"Kafka transaction failed: {reason}") from exc

    def _fenced(self, reason: str) -> Fenced:
        return Fenced(f"partition {self.partition} was taken over by another member ({reason})")

    def _finish(self, producer: Producer) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                producer.commit_transaction(30)
                return
            except KafkaException as exc:
                if exc.args[0].retriable() and time.monotonic() < deadline:
                    log.warning("committing a transaction: %s (retrying)", exc.args[0].str())
                    continue
                raise

    def renew(self) -> None:
        """A fresh producer with the same id (fences the old one, aborts its open
        transaction)."""
        self._producer = self._new_producer()

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except:  # noqa: E722 - a fenced producer raises KafkaError, which is no BaseException
            # a fenced or broken producer has nothing left worth delivering
            log.info("closing the producer of partition %d: %s", self.partition, sys.exc_info()[1])


_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def _is_fenced(error: KafkaError) -> bool:
    # librdkafka sometimes reports the fencing through another code (e.g. ending a
    # transaction: "This instance has been fenced by a newer instance")
    return error.code() in _FENCED or "fenced" in error.str().lower()


class PartitionBackend:
    """The backend one partition's engine sees (see the module docstring): an
    :class:`~overture.ports.EngineBackend`."""

    capabilities = CAPABILITIES

    def __init__(self, membership: Membership, partition: int) -> None:
        self.membership = membership
        self.partition = partition
        self.url = f"{membership.settings.url}#partition={partition}"
        self.log = _PartitionLog(membership, partition)
        self.committer = Committer(
            membership.settings, membership.partitions, partition, membership.task_topics
        )
        self.store = _PartitionStore(membership, self.committer, partition)

    @property
    def owned(self) -> list[int]:
        """The logical partitions its engine consumes: events ``p``, internal ``p``."""
        return [self.partition, self.membership.partitions + self.partition]

    def reload(self) -> None:
        """Replace the local state by a fresh restore from the changelog: after a commit
        whose outcome is unknown (it may have committed although it reported failure),
        only Kafka knows what holds.

        Raises:
            Fenced: the partition is no longer assigned to this member.
        """
        if self.partition not in self.membership.assigned:
            raise Fenced(f"partition {self.partition} is no longer assigned to this member")
        self.committer.renew()
        store = _PartitionStore(self.membership, self.committer, self.partition)
        restore_partitions(self.membership.settings, {self.partition: store})
        self.store = store

    def engine_lock(self) -> Callable[[], None]:
        """Nothing to take: the group gave this partition to this member only, and the
        partition's producer fenced its previous owner (``local_lock`` is False)."""
        return lambda: None

    def close(self) -> None:
        self.committer.close()


class _PartitionLog:
    def __init__(self, membership: Membership, partition: int) -> None:
        self._m = membership
        self._partition = partition

    @property
    def partitions(self) -> int:
        return self._m.partitions

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        return self._m.read(partition, offset, limit)

    def end_offset(self, partition: int) -> int:
        return self._m.end_offset(partition)

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        stops = [
            self._m.subscribe(lp, wake)
            for lp in (self._partition, self._m.partitions + self._partition)
        ]

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe


class _PartitionStore(MemoryState):
    """The partition's local state; a commit goes to Kafka first and is applied here only
    once its transaction committed."""

    def __init__(self, membership: Membership, committer: Committer, partition: int) -> None:
        super().__init__()
        self._membership = membership
        self._committer = committer
        self._partition = partition

    def commit(self, batch: Batch) -> None:
        self._committer.commit(batch, self)
        self.apply(batch)
        self._membership.committed(batch.offsets)
