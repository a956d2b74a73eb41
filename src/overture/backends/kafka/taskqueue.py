"""``KafkaBackend.tasks``: the task queues as a consumer group, with leases in memory.

Per queue this process serves, one consumer in the queue's worker group
(``protocol.worker_group``) reads the queue's topic (``read_committed``: an attempt of a
batch that did not commit is never seen) in a background thread, into a buffer; a claim
hands buffered attempts out with a lease kept in memory, and the attempt stays in the
buffer until its worker finishes it. Offsets are committed by hand, up to the lowest
offset of each partition not finished yet, so the group's committed position never
passes an attempt still running: when this process dies (even by ``kill -9``), the
member that gets its partitions after the rebalance reads those attempts again. That is
Kafka's at-least-once, and the engine keeps only the first result of an attempt.

Within this process a lease behaves as on SQLite: one that runs out re-hands its attempt
to the next claim, a heartbeat renews it, and an attempt whose request deadline has
passed is not handed out (the engine has given it up). What Kafka cannot give is a view
across processes, so :meth:`KafkaTaskQueue.finish`'s outcomes mean less than on SQLite:

- ``"accepted"``: the result is on the events topic (acknowledged by the cluster).
- ``"ended"``: this process knows the attempt is over here: it already took a result
  for it, or its deadline passed before it was handed out. It does *not* know whether
  the engine has ended the attempt for another reason (a result from another process,
  the instance cancelled): ``Batch.tasks[id] = None`` publishes nothing on Kafka.
- ``"unknown"``: this process does not hold the attempt: never published, on a
  partition another member holds, or given up here by a rebalance. A worker's result for
  such an attempt is therefore refused, although the engine might still have taken it.

None of that can make the engine apply a wrong result: it drops a result of an attempt
that is not current (stale attempt, duplicate, after the deadline) on every backend.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from ... import protocol
from ...errors import BrokerUnavailable, ConfigError
from ...ports import ClaimedTask, FinishOutcome, NewRecord
from .queues import TaskTopics, check_queue
from .settings import KafkaSettings
from .writing import place_record, send

log = logging.getLogger("overture.kafka")

SEND_TIMEOUT = 30.0
"""Seconds a result may take to be acknowledged before ``finish`` gives up."""
PAUSE_AT = 2_000
"""Attempts buffered in one queue (fetched, not finished) at which fetching pauses."""
RESUME_AT = 500
_CLOSED_KEPT = 100_000
"""Ids of attempts finished here that are remembered, so a result sent twice (or a
record fetched again after a rebalance) is recognized as over."""


@dataclass(slots=True, eq=False)
class _Attempt:
    id: str
    partition: int
    offset: int
    request: bytes
    deadline: float | None
    part: _Part | None
    """The partition it was fetched from, while this process holds that partition."""
    holder: str | None = None
    lease_until: float = 0.0
    token: int = 0
    """Which heap entry is this attempt's current lease (older ones are stale)."""
    finishing: bool = False


@dataclass(slots=True)
class _Part:
    """A partition of a queue's topic, while it is assigned to this process."""

    open: dict[int, _Attempt] = field(default_factory=dict)
    """Offset -> attempt not finished yet, in offset order."""
    next: int | None = None
    """The offset after the last record fetched."""
    committed: int | None = None

    def position(self) -> int | None:
        """The offset the group may commit: the lowest still open, else past the last."""
        return next(iter(self.open), self.next)


def _deadline(request: bytes) -> float | None:
    """A request's deadline, read without validating the rest (the worker does that)."""
    try:
        data = orjson.loads(request).get("data")
        value = data.get("deadline") if isinstance(data, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Queue:
    """One queue's consumer, its fetching thread and its buffer of attempts."""

    def __init__(self, settings: KafkaSettings, queue: str, wake: Callable[[], None]) -> None:
        self.name = queue
        self.topic = check_queue(settings, queue)
        self._wake = wake
        self._lock = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}  # open here, by attempt id
        self._ready: deque[_Attempt] = deque()  # never handed out (or handed back)
        self._leases: list[tuple[float, int, _Attempt]] = []  # heap by lease end
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._parts: dict[int, _Part] = {}
        self._tokens = itertools.count(1)
        self._paused = False
        self._stop = threading.Event()
        self._consumer = Consumer(
            settings.config(
                **{
                    "group.id": protocol.worker_group(settings.namespace, queue),
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    # "roundrobin" is a protocol name kafkajs workers can share (see
                    # examples/node), so one group may mix Python and Node.js members
                    "partition.assignment.strategy": "roundrobin",
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                }
            )
        )
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        self._thread = threading.Thread(
            target=self._run, name=f"overture-tasks-{queue}", daemon=True
        )
        self._thread.start()

    # -- what the workers call ----------------------------------------------------------------

    def take(self, worker: str, limit: int, lease: float, now: float) -> list[ClaimedTask]:
        out: list[ClaimedTask] = []
        with self._lock:
            # leases that ran out first: their attempts are the oldest
            while self._leases and self._leases[0][0] <= now and len(out) < limit:
                _, token, attempt = heapq.heappop(self._leases)
                if token != attempt.token or attempt.finishing or attempt.holder is None:
                    continue  # renewed, finished, or being finished
                if attempt.part is None:  # its partition went to another member
                    self._attempts.pop(attempt.id, None)
                    continue
                self._hand(attempt, worker, lease, now, out)
            while self._ready and len(out) < limit:
                attempt = self._ready.popleft()
                if attempt.holder is None and self._attempts.get(attempt.id) is attempt:
                    self._hand(attempt, worker, lease, now, out)
        return out

    def _hand(
        self, attempt: _Attempt, worker: str, lease: float, now: float, out: list[ClaimedTask]
    ) -> None:
        if attempt.deadline is not None and attempt.deadline <= now:
            self._finished(attempt)  # the engine has given it up: running it is waste
            return
        attempt.holder = worker
        self._lease(attempt, now + lease)
        out.append(ClaimedTask(attempt.id, self.name, attempt.request, attempt.lease_until))

    def _lease(self, attempt: _Attempt, until: float) -> None:
        attempt.lease_until = until
        attempt.token = next(self._tokens)
        heapq.heappush(self._leases, (until, attempt.token, attempt))

    def heartbeat(self, task_id: str, worker: str, lease: float) -> bool | None:
        """True: renewed; False: not ``worker``'s any more; None: not this queue's."""
        with self._lock:
            attempt = self._attempts.get(task_id)
            if attempt is None:
                return False if task_id in self._closed else None
            if attempt.holder != worker or attempt.finishing:
                return False
            self._lease(attempt, time.time() + lease)
            return True

    def begin_finish(self, task_id: str) -> _Attempt | FinishOutcome | None:
        """The attempt, now being finished; an outcome if it cannot be; None: not ours."""
        with self._lock:
            attempt = self._attempts.get(task_id)
            if attempt is None:
                return "ended" if task_id in self._closed else None
            if attempt.finishing:
                return "ended"  # another result is being written right now
            attempt.finishing = True
            return attempt

    def end_finish(self, attempt: _Attempt, *, written: bool) -> None:
        with self._lock:
            if written:
                self._finished(attempt)
            else:
                attempt.finishing = False

    def _finished(self, attempt: _Attempt) -> None:
        if self._attempts.get(attempt.id) is attempt:
            del self._attempts[attempt.id]
        if attempt.part is not None:
            attempt.part.open.pop(attempt.offset, None)
        self._remember(attempt.id)

    def _remember(self, attempt_id: str) -> None:
        self._closed[attempt_id] = None
        if len(self._closed) > _CLOSED_KEPT:
            self._closed.popitem(last=False)

    def assigned(self) -> list[int]:
        with self._lock:
            return sorted(self._parts)

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    # -- the fetching thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._commit(asynchronous=True)
                self._backpressure()
                messages = self._consumer.consume(1, 0.05)
                if messages:
                    messages.extend(self._consumer.consume(499, 0))
                fresh = False
                for message in messages:
                    fresh |= self._take(message)
                if fresh or self._lease_ran_out():
                    self._wake()
        except:  # noqa: E722 - confluent also raises KafkaError, which is no BaseException
            log.exception("the Kafka consumer of task queue %r failed", self.name)
        finally:
            try:
                self._consumer.close()  # leaves the group: _revoked commits what finished
            except Exception:
                log.exception("closing the Kafka consumer of task queue %r", self.name)

    def _take(self, message: Any) -> bool:
        error = message.error()
        if error is not None:
            log.warning("task queue %r: %s", self.name, error.str())
            return False
        partition, offset = message.partition(), message.offset()
        request = message.value() or b""
        key = message.key()
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return False  # no longer assigned
            part.next = offset + 1
            # The record key is the attempt id (our engines write it); another
            # producer's record without one is handed out by its offset and left for
            # the worker to refuse as no task request.
            attempt_id = key.decode(errors="replace") if key else f"{partition}@{offset}"
            if attempt_id in self._closed:
                return False  # finished here already; fetched again after a rebalance
            held = self._attempts.get(attempt_id)
            if held is not None:
                if held.part is None:  # still running here from before a rebalance
                    held.part, held.partition, held.offset = part, partition, offset
                    part.open[offset] = held
                return False  # else a second copy of a running attempt: nothing to do
            attempt = _Attempt(attempt_id, partition, offset, request, _deadline(request), part)
            self._attempts[attempt_id] = attempt
            part.open[offset] = attempt
            self._ready.append(attempt)
            return True

    def _lease_ran_out(self) -> bool:
        now = time.time()
        with self._lock:
            while self._leases:
                until, token, attempt = self._leases[0]
                if token == attempt.token and not attempt.finishing and attempt.holder:
                    return until <= now and attempt.part is not None
                heapq.heappop(self._leases)  # stale: drop it so it wakes nobody
            return False

    def _backpressure(self) -> None:
        with self._lock:
            size = len(self._attempts)
            parts = [TopicPartition(self.topic, p) for p in self._parts]
        if not self._paused and size >= PAUSE_AT and parts:
            self._consumer.pause(parts)
            self._paused = True
        elif self._paused and size < RESUME_AT:
            if parts:
                self._consumer.resume(parts)
            self._paused = False

    def _commit(self, *, asynchronous: bool, only: Sequence[int] | None = None) -> None:
        with self._lock:
            due = []
            for p, part in self._parts.items():
                position = part.position()
                wanted = only is None or p in only
                if wanted and position is not None and position != part.committed:
                    due.append(TopicPartition(self.topic, p, position))
                    part.committed = position
        if due:
            try:
                if asynchronous:
                    self._consumer.commit(offsets=due, asynchronous=True)
                else:
                    self._consumer.commit(offsets=due, asynchronous=False)
            except KafkaException as exc:  # e.g. a rebalance under way: try again next round
                log.warning("task queue %r: committing offsets failed: %s", self.name, exc)
                with self._lock:
                    for tp in due:
                        if (undone := self._parts.get(tp.partition)) is not None:
                            undone.committed = None

    def _assigned(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self._parts[tp.partition] = _Part()
        self._paused = False
        log.info("task queue %r: assigned partitions %s", self.name, [tp.partition for tp in tps])

    def _revoked(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        # the next owner starts from here: commit what finished, synchronously
        self._commit(asynchronous=False, only=[tp.partition for tp in tps])
        self._lost(consumer, tps)

    def _lost(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        """Forget the partitions' attempts, except those a worker here still runs: their
        results are still accepted (the engine takes the first), and if the partition
        comes back, its records are joined to them again instead of handed out twice."""
        with self._lock:
            for tp in tps:
                part = self._parts.pop(tp.partition, None)
                if part is None:
                    continue
                for attempt in part.open.values():
                    attempt.part = None
                    if attempt.holder is None and self._attempts.get(attempt.id) is attempt:
                        del self._attempts[attempt.id]


class KafkaTaskQueue:
    """The :class:`~overture.ports.TaskQueue` of a ``kafka://`` namespace (see the module
    docstring): a consumer per queue, created by the first claim of that queue."""

    def __init__(self, settings: KafkaSettings, partitions: int, topics: TaskTopics) -> None:
        self._settings = settings
        self._partitions = partitions
        self._topics = topics
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []
        self._producer: Producer | None = None
        self._rotation = itertools.count()
        self._closed = False

    def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[ClaimedTask]:
        """Hand out up to ``limit`` buffered attempts of ``queues`` (see the port). The
        first claim of a queue joins its group, so it returns nothing until the group
        assigned this process its partitions (a second or so).

        Raises:
            ConfigError: no queues, an invalid queue name, worker, limit or lease.
            BrokerUnavailable: a queue's topic cannot be looked up or created.
        """
        if isinstance(queues, str) or not queues:
            raise ConfigError(f"claim needs a non-empty list of queue names, not {queues!r}")
        _check_worker(worker)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"claim's limit must be a positive integer, not {limit!r}")
        _check_lease(lease)
        served = [self._queue(q) for q in dict.fromkeys(queues)]
        # rotate which queue goes first, so a busy one does not starve the others
        start = next(self._rotation) % len(served)
        now = time.time()
        out: list[ClaimedTask] = []
        for queue in served[start:] + served[:start]:
            out += queue.take(worker, limit - len(out), lease, now)
            if len(out) >= limit:
                break
        return out

    def heartbeat(self, task_id: str, worker: str, lease: float) -> bool:
        """Renew ``worker``'s lease; False if the attempt is not its own here any more."""
        _check_worker(worker)
        _check_lease(lease)
        for queue in self._served():
            renewed = queue.heartbeat(task_id, worker, lease)
            if renewed is not None:
                return renewed
        return False

    def finish(self, task_id: str, worker: str, result: NewRecord) -> FinishOutcome:
        """Produce ``result`` to the events topic (partition ``result.partition``, key
        ``result.key``, binary content mode like every event Overture writes), then let
        the attempt's offset be committed. See the module docstring for what the
        outcomes can mean on Kafka.

        Raises:
            ConfigError: ``result`` is not this attempt's result record.
            BrokerUnavailable: the result was not acknowledged in time (the attempt stays
                open: finishing again is safe, the engine keeps the first result).
        """
        _check_worker(worker)
        _check_result(task_id, result)
        for queue in self._served():
            found = queue.begin_finish(task_id)
            if found is None:
                continue
            if isinstance(found, str):
                return found
            written = False
            try:
                self._send(result)
                written = True
            finally:
                queue.end_finish(found, written=written)
            return "accepted"
        return "unknown"

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """``wake`` is called when attempts arrived or a lease ran out (in a queue this
        process has claimed from)."""
        with self._lock:
            self._wakers.append(wake)

        def unsubscribe() -> None:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)

        return unsubscribe

    def assigned(self, queue: str) -> list[int]:
        """The partitions of ``queue``'s topic the group gave this process (for tools
        and tests; empty until the first claim of the queue joined the group)."""
        with self._lock:
            served = self._queues.get(queue)
        return [] if served is None else served.assigned()

    def close(self) -> None:
        """Leave the groups (committing what finished) and flush the producer."""
        with self._lock:
            self._closed = True
            queues = list(self._queues.values())
            self._queues.clear()
            producer, self._producer = self._producer, None
        for queue in queues:
            queue.close()
        if producer is not None:
            producer.flush(SEND_TIMEOUT)

    def _served(self) -> list[_Queue]:
        with self._lock:
            return list(self._queues.values())

    def _queue(self, name: str) -> _Queue:
        with self._lock:
            if self._closed:
                raise ConfigError("the task queue was closed")
            served = self._queues.get(name)
        if served is not None:
            return served
        self._topics.partitions(name)  # a missing topic is created before subscribing
        with self._lock:
            served = self._queues.get(name)
            if served is None:
                served = self._queues[name] = _Queue(self._settings, name, self._wake)
            return served

    def _wake(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def _send(self, result: NewRecord) -> None:
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
        done = threading.Event()
        errors: list[str] = []

        def report(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(error.str())
            done.set()

        placed = place_record(result, self._partitions, 0)
        try:
            send(
                producer,
                self._settings.events_topic,
                placed.value,
                placed.key,
                placed.partition,
                placed.headers,
                report,
            )
        except KafkaException as exc:
            raise BrokerUnavailable(f"sending a task result failed: {exc.args[0].str()}") from exc
        deadline = time.monotonic() + SEND_TIMEOUT + 5
        while not done.is_set() and time.monotonic() < deadline:
            producer.poll(0.01)  # serves whichever thread's delivery reports are due
        if errors or not done.is_set():
            reason = errors[0] if errors else "not acknowledged in time"
            raise BrokerUnavailable(
                f"sending a task result to Kafka at {self._settings.bootstrap} failed: {reason}"
            )


def _check_worker(worker: object) -> None:
    if not isinstance(worker, str) or not worker:
        raise ConfigError(f"a worker name must be a non-empty string, not {worker!r}")


def _check_lease(lease: object) -> None:
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int | float)
        or not math.isfinite(lease)
        or lease <= 0
    ):
        raise ConfigError(f"a lease must be a positive number of seconds, not {lease!r}")


def _check_result(task_id: str, result: object) -> None:
    if not isinstance(result, NewRecord):
        raise ConfigError(f"a task result must be a NewRecord, not {type(result).__name__}")
    expected = protocol.task_result_id(task_id)
    if result.event_id != expected or result.event_type not in (
        protocol.TASK_COMPLETED,
        protocol.TASK_FAILED,
    ):
        raise ConfigError(
            f"the result of attempt {task_id!r} must be an {protocol.TASK_COMPLETED!r} or "
            f"{protocol.TASK_FAILED!r} event with id {expected!r} (build it with "
            f"overture.tasks.completed/failed), not {result.event_type!r} {result.event_id!r}"
        )
    if result.partition is None:
        raise ConfigError(f"the result of attempt {task_id!r} names no partition (reply.partition)")
