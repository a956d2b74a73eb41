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
  for it (or is writing one at this moment), or its deadline passed before it was
  handed out. It does *not* know whether
  the engine has ended the attempt for another reason (a result from another process,
  the instance cancelled): ``Batch.tasks[id] = None`` publishes nothing on Kafka.
- ``"unknown"``: this process does not hold the attempt: never published, on a
  partition another member holds, or given up here by a rebalance. A worker's result for
  such an attempt is therefore refused, although the engine might still have taken it.

None of that can make the engine apply a wrong result: it drops a result of an attempt
that is not current (stale attempt, duplicate, after the deadline) on every backend.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from ... import protocol
from ...errors import BrokerUnavailable, ConfigError, EventValidationError
from ...ports import ClaimedTask, FinishOutcome, NewRecord
from .claims import BUFFER, QueueConsumer, _Attempt
from .queues import TaskTopics
from .settings import KafkaSettings
from .writing import place_record, send

SEND_TIMEOUT = 30.0
"""Seconds a result may take to be acknowledged before ``finish`` gives up."""


class KafkaTaskQueue:
    """The :class:`~overture.ports.TaskQueue` of a ``kafka://`` namespace (see the module
    docstring): a consumer per queue, created by the first claim of that queue, holding
    at most ``buffer`` attempts of its queue (``claims.BUFFER``)."""

    def __init__(
        self, settings: KafkaSettings, partitions: int, topics: TaskTopics, *, buffer: int = BUFFER
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._partitions = partitions
        self._topics = topics
        self._queues: dict[str, QueueConsumer] = {}
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []
        self._sender: _Sender | None = None
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

    def finish(
        self, task_id: str, worker: str, result: NewRecord, *, durable: bool = True
    ) -> FinishOutcome:
        """Produce ``result`` to the events topic (partition ``result.partition``, key
        ``result.key``, binary content mode like every event Overture writes), then let
        the attempt's offset be committed (acknowledged by the brokers either way:
        ``durable`` changes nothing here). See the module docstring for what the
        outcomes can mean on Kafka.

        Raises:
            ConfigError: ``result`` is not this attempt's result record.
            BrokerUnavailable: the result was not acknowledged in time (the attempt stays
                open: finishing again is safe, the engine keeps the first result).
        """
        (outcome,) = self.finish_many(worker, [(task_id, result)], durable=durable)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def finish_many(
        self, worker: str, finishes: Sequence[tuple[str, NewRecord]], *, durable: bool = True
    ) -> list[FinishOutcome | Exception]:
        """See ``ports.TaskQueue.finish_many``: every result is produced before the
        acknowledgements are awaited (one round trip for all), each checked and
        reported as :meth:`finish` checks and reports it.

        Raises:
            ConfigError: an empty worker id (nothing is sent).
        """
        _check_worker(worker)
        out: list[FinishOutcome | Exception] = []
        held: list[tuple[int, QueueConsumer, _Attempt]] = []  # where in ``out``, whose
        try:
            for task_id, result in finishes:
                try:
                    _check_result(task_id, result)
                except ConfigError as error:
                    out.append(error)
                    continue
                out.append("unknown")
                for queue in self._served():
                    found = queue.begin_finish(task_id)
                    if isinstance(found, str):
                        out[-1] = found
                    elif found is not None:
                        held.append((len(out) - 1, queue, found))
                    if found is not None:
                        break
            errors = self._send([finishes[i][1] for i, _, _ in held])
            for (i, _, _), failure in zip(held, errors, strict=True):
                out[i] = "accepted" if failure is None else failure
        finally:
            for i, queue, attempt in held:  # an attempt not written stays open
                queue.end_finish(attempt, written=out[i] == "accepted")
        return out

    def request(self, task_id: str) -> bytes | None:
        """Known only for the attempts this process's consumers hold."""
        for queue in self._served():
            found = queue.request(task_id)
            if found is not None:
                return found
        return None

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
            sender, self._sender = self._sender, None
        for queue in queues:
            queue.close()
        if sender is not None:
            sender.close()

    def _served(self) -> list[QueueConsumer]:
        with self._lock:
            return list(self._queues.values())

    def _queue(self, name: str) -> QueueConsumer:
        with self._lock:
            if self._closed:
                raise ConfigError("the task queue was closed")
            served = self._queues.get(name)
            if served is not None and served.failure is not None:
                # its consumer is gone: say so once, and start afresh with the next claim
                del self._queues[name]
                raise BrokerUnavailable(
                    f"the Kafka consumer of task queue {name!r} failed: {served.failure}"
                )
        if served is not None:
            return served
        self._topics.partitions(name)  # a missing topic is created before subscribing
        with self._lock:
            # close() may have run while the topic was looked up: a consumer made now
            # would never be closed (its group membership would hold the queue's
            # partitions, and the attempts on them, for as long as this process lives)
            if self._closed:
                raise ConfigError("the task queue was closed")
            served = self._queues.get(name)
            if served is None:
                served = self._queues[name] = QueueConsumer(
                    self._settings, name, self._wake, buffer=self._buffer
                )
            return served

    def _wake(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def _send(self, results: list[NewRecord]) -> list[Exception | None]:
        if not results:
            return []
        with self._lock:
            if self._closed:  # a producer made after close() would never be flushed
                raise ConfigError("the task queue was closed: the result was not sent")
            if self._sender is None:
                self._sender = _Sender(self._settings, self._partitions)
            sender = self._sender
        return sender.send_many(results)


class _Sender:
    """An idempotent producer of results, whose delivery reports a thread of its own
    serves: each ``send`` waits for its record's acknowledgement only (a worker's threads
    finishing at once do not wait for each other's, as with ``flush``)."""

    def __init__(self, settings: KafkaSettings, partitions: int) -> None:
        self._settings = settings
        self._partitions = partitions
        self._producer = Producer(
            settings.config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    "message.timeout.ms": int(SEND_TIMEOUT * 1000),
                }
            )
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="overture-task-results", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send_many(self, results: Sequence[NewRecord]) -> list[Exception | None]:
        """Produce each of ``results`` where it belongs, then wait (one deadline for
        all) until the cluster acknowledged them; for each, None once acknowledged, or
        why it was not: ``EventValidationError`` (refused for good: larger than the
        cluster takes) or ``BrokerUnavailable`` (refused, or not acknowledged in time).
        """
        out: list[Exception | None] = [None] * len(results)
        waiting: list[tuple[int, threading.Event, list[Any]]] = []
        for i, result in enumerate(results):
            done = threading.Event()
            errors: list[Any] = []  # the KafkaError its delivery report gave, if any

            def report(error: Any, message: Any, done: Any = done, errors: Any = errors) -> None:
                if error is not None:
                    errors.append(error)
                done.set()

            placed = place_record(result, self._partitions, 0)
            try:
                send(
                    self._producer,
                    self._settings.events_topic,
                    placed.value,
                    placed.key,
                    placed.partition,
                    placed.headers,
                    report,
                )
            except KafkaException as exc:
                failure = self._failure(result, exc.args[0])
                failure.__cause__ = exc
                out[i] = failure
                continue
            waiting.append((i, done, errors))
        deadline = time.monotonic() + SEND_TIMEOUT + 5
        for i, done, errors in waiting:
            if not done.wait(max(0.0, deadline - time.monotonic())):
                out[i] = self._failure(results[i], None)
            elif errors:
                out[i] = self._failure(results[i], errors[0])
        return out

    def _failure(self, result: NewRecord, error: Any) -> Exception:
        """Why ``result`` was not written: ``error`` is the KafkaError, None if no
        acknowledgement came in time."""
        if error is not None and error.code() in _TOO_LARGE:
            return _refused(result, error.str())
        reason = "not acknowledged in time" if error is None else error.str()
        return BrokerUnavailable(
            f"sending a task result to Kafka at {self._settings.bootstrap} failed: {reason}"
        )

    def close(self) -> None:
        self._producer.flush(SEND_TIMEOUT)
        self._stop.set()
        self._thread.join(timeout=5)


_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE})
"""The errors of a record larger than the broker (or the producer) accepts."""


def _refused(result: NewRecord, reason: str) -> EventValidationError:
    """A result the cluster will never take, however often it is sent: sending it again
    would only run the attempt again and again (the worker answers with a failure)."""
    return EventValidationError(
        f"the task result ({len(result.value)} bytes) is larger than the Kafka cluster "
        f"accepts: {reason}"
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
