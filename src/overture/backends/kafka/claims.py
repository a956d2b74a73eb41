"""One task queue's consumer in its worker group, and the attempts it holds.

:class:`QueueConsumer` fetches the queue's topic in a background thread into a buffer of
attempts; ``take`` hands them out with leases kept in memory, and each partition's
committed offset follows the lowest attempt not finished yet (see ``taskqueue.py``,
whose :class:`~overture.backends.kafka.taskqueue.KafkaTaskQueue` has one per queue).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from ... import protocol
from ...ports import ClaimedTask, FinishOutcome
from .queues import check_queue
from .settings import KafkaSettings

log = logging.getLogger("overture.kafka")

BUFFER = 2_000
"""Attempts of one queue this process holds at most (fetched and not finished): at that
many its consumer pauses, and it resumes once a quarter of them are left (backpressure:
the rest wait in Kafka, where the group's other members can get them after a
rebalance)."""
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
    """A result is being written (or was: the attempt is over)."""


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


def _attempt_of(request: bytes) -> tuple[str, float | None] | None:
    """The attempt id and deadline of a request record, or ``None`` for a record that is
    no task request (another producer's). Read without validating the rest, which the
    worker does (``tasks.parse_request``); the data may even be a payload codec's."""
    try:
        event = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") != protocol.TASK_REQUESTED:
        return None
    attempt_id, data = event.get("id"), event.get("data")
    if not isinstance(attempt_id, str) or not attempt_id:
        return None
    value = data.get("deadline") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return attempt_id, None
    return attempt_id, float(value)


class QueueConsumer:
    """One queue's consumer, its fetching thread and its buffer of attempts."""

    def __init__(
        self,
        settings: KafkaSettings,
        queue: str,
        wake: Callable[[], None],
        *,
        buffer: int = BUFFER,
    ) -> None:
        self.name = queue
        self._buffer = buffer
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
        self.failure: str | None = None
        """Why the fetching thread stopped, if it failed (the queue is then replaced)."""
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

    def request(self, task_id: str) -> bytes | None:
        """The request of an attempt this queue's consumer holds (None: not held)."""
        with self._lock:
            attempt = self._attempts.get(task_id)
            return None if attempt is None else attempt.request

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
        attempt.finishing = True  # for good: its lease entries in the heap are stale now
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
                room = self._backpressure()
                # consume(n, timeout) waits for n records or the timeout: wait for the
                # first only, then take what has already arrived, never more than fits
                messages = self._consumer.consume(1, 0.05)
                if messages and room > 1:
                    messages.extend(self._consumer.consume(min(room, 500) - 1, 0))
                fresh = False
                for message in messages:
                    fresh |= self._take(message)
                if fresh or self._lease_ran_out():
                    self._wake()
        except:  # noqa: E722 - confluent also raises KafkaError, which is no BaseException
            log.exception("the Kafka consumer of task queue %r failed", self.name)
            self.failure = str(sys.exc_info()[1])
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
        found = _attempt_of(request)
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return False  # no longer assigned
            part.next = offset + 1
            if found is None:
                # no task request (another producer wrote it): handing it out would
                # leave a worker nothing to answer, and its offset would hold the
                # partition's commits back for ever; it is passed over, and said so
                log.warning(
                    "task queue %r: %s[%d]@%d is no %s event; skipped",
                    self.name,
                    self.topic,
                    partition,
                    offset,
                    protocol.TASK_REQUESTED,
                )
                return False
            attempt_id, deadline = found
            if attempt_id in self._closed:
                return False  # finished here already; fetched again after a rebalance
            held = self._attempts.get(attempt_id)
            if held is not None:
                if held.part is None:  # still running here from before a rebalance
                    held.part, held.partition, held.offset = part, partition, offset
                    part.open[offset] = held
                return False  # else a second copy of a running attempt: nothing to do
            attempt = _Attempt(attempt_id, partition, offset, request, deadline, part)
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

    def _backpressure(self) -> int:
        """Pause or resume fetching; how many more attempts fit in the buffer."""
        with self._lock:
            size = len(self._attempts)
            parts = [TopicPartition(self.topic, p) for p in self._parts]
        if not self._paused and size >= self._buffer and parts:
            self._consumer.pause(parts)
            self._paused = True
        elif self._paused and size <= self._buffer // 4:
            if parts:
                self._consumer.resume(parts)
            self._paused = False
        return self._buffer - size

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
