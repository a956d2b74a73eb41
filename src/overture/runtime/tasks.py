"""Remote tasks (``ctx.call``): publishing attempts, applying their results and deadlines.

A called task is a work row like a step's (kind ``"task"``, id ``"<instance>:<seq>"``,
its attempt number), so it is durable the same way: the row is staged with the batch
that scheduled it and replaced or removed with the batch that applies what happened to
it. The row is in one of two states, kept in its payload:

- *published* (``work.TASK_PUBLISHED``): attempt ``n`` is on its queue
  (``Batch.tasks[task_attempt_id] = TaskRecord``, committed with the same batch); the
  row is due at the attempt's deadline (far in the future when it has none), when the
  attempt is given up as a retryable ``TaskTimeout`` failure;
- *backoff* (``work.TASK_BACKOFF``): attempt ``n`` waits for its retry delay; when the
  row comes due the attempt is published, with a fresh deadline;
- *waiting* (``work.TASK_QUEUED``): attempt ``n`` waits for room on its queue, which has
  ``max_open_tasks_per_queue`` open attempts already (``runtime/backpressure.py``); it is
  published, with a fresh deadline, when earlier open attempts end, oldest call first.

Only the current attempt's first result counts: a result is applied if the row is
published with the result's attempt number and its deadline has not passed, and every
other one (a stale attempt, a duplicate, one after the deadline or after the instance
ended) changes nothing (``stats["task_results_dropped"]``, ``Observer.task_result_dropped``);
one for an instance this engine does not hold at all is dead-lettered by the router.
Applying a result, giving an attempt up, and the end of the instance all end the
attempt (``Batch.tasks[id] = None``, through ``Work.clear`` for the last), so no worker
claims it afterwards and the queue refuses a result for it.

The engine, not the worker, owns the policy: the options of the call override the
app's ``@app.task`` definition (``App.task_def``), resolved here so that the core stays
free of the app; a task the app does not define gets ``DEFAULT_RETRY``, no deadline and
the default queue. :class:`Attempts` publishes and ends attempts (``Instances`` hands it
the calls its machines issue); :class:`Tasks` applies results and due rows to instances.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .. import protocol
from ..app import App
from ..codec import Codec
from ..core import machine as m
from ..events import Envelope
from ..policies import DEFAULT_RETRY, Retry
from ..ports import InstanceRow, TaskRecord, WorkRow
from ..tracecontext import continue_trace
from .backpressure import OpenTasks, published_payload, waiting_payload
from .instances import Instances
from .observer import Observer
from .staging import Live, Stage
from .work import TASK_BACKOFF, TASK_PUBLISHED, TASK_QUEUED, Work, task_state

log = logging.getLogger("overture.engine")

NO_DEADLINE = 253_402_300_799.0
"""The due time of a published attempt without a deadline (9999-12-31): a finite number,
which every store and the changelog's JSON carry exactly (an infinity would not)."""

TIMEOUT = "TaskTimeout"
"""The error type of an attempt that reached its deadline without a result."""


class Attempts:
    """Publishes and ends task attempts (see the module docstring).

    Args:
        app: the application (task definitions, its name as the requests' source).
        codec: turns a request into the bytes workers read.
        work: holds the task rows.
        observer: told of every attempt published.
        stats: the engine's counters (``task_attempts``, ``task_attempts_waited``).
        max_open: most open attempts per queue (``max_open_tasks_per_queue``).
    """

    def __init__(
        self,
        app: App,
        codec: Codec,
        work: Work,
        observer: Observer,
        stats: dict[str, int],
        max_open: int = 10_000,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._codec = codec
        self._work = work
        self._observer = observer
        self._stats = stats
        self._wall = wall
        self.open = OpenTasks(max_open, work.release, work.get, observer)
        work.task_ended = self.open.ended

    def load(self, rows: list[WorkRow]) -> None:
        """Count the open attempts and line up the waiting calls of the stored rows (at
        start, after ``Work.load``), releasing the oldest that fit."""

        def queue_for(row: WorkRow) -> str:  # a row stored before rows named their queue
            definition = self._app.task_def(row.name or "")
            return protocol.DEFAULT_QUEUE if definition is None else definition.queue

        self.open.load(rows, queue_for)

    def options(self, call: m.TaskCall) -> tuple[str, Retry, float | None]:
        """The queue, retry policy and attempt timeout of a call: its own, else the task
        definition's, else the defaults."""
        definition = self._app.task_def(call.task)
        queue = call.queue or (protocol.DEFAULT_QUEUE if definition is None else definition.queue)
        retry = call.retry or (DEFAULT_RETRY if definition is None else definition.retry)
        timeout = call.timeout
        if timeout is None and definition is not None:
            timeout = definition.timeout
        return queue, retry, timeout

    def publish(
        self,
        stage: Stage,
        instance: InstanceRow,
        call: m.TaskCall,
        attempt: int,
        now: float,
        *,
        released: bool = False,
    ) -> None:
        """Publish attempt ``attempt`` of a call with this batch: its queue entry and its
        row, due at the attempt's deadline; or, when its queue is full (or earlier calls
        wait for it), its waiting row. ``released``: a waiting row whose turn came."""
        queue, _, timeout = self.options(call)
        if not released and not self.open.may_open(queue):
            ordinal = self.open.wait(call.idempotency_key, queue)
            payload = waiting_payload(ordinal, queue)
            self._work.put(
                stage,
                WorkRow(
                    call.idempotency_key,
                    "task",
                    NO_DEADLINE,
                    attempt,
                    call.instance_id,
                    call.seq,
                    call.task,
                    payload,
                ),
            )
            self._stats["task_attempts_waited"] += 1
            return
        # The request's deadline is read by workers and queues, which compare it with the
        # wall clock (they run in real time), so it is wall time, even when the engine
        # runs a virtual clock (a test's): in engine time, a virtual clock behind the wall
        # made every attempt look expired to them (none ever ran). The engine's own
        # deadline, the row's due time below, is in its clock. (Equal on a real clock.)
        deadline = None if timeout is None else self._wall() + timeout
        attempt_id = protocol.task_attempt_id(call.instance_id, call.seq, attempt)
        # protocol.TaskRequest's fields, as a dict: built from values the engine made
        # itself, so validating them again would only cost time (every worker parses it
        # with the model, and so do the tests)
        request = {
            "task": call.task,
            "queue": queue,
            "input": call.input,
            "instance_id": call.instance_id,
            "seq": call.seq,
            "attempt": attempt,
            "idempotency_key": call.idempotency_key,
            "deadline": deadline,
            # the instance's key and partition: a result appended with them reaches the
            # partition that holds the instance, on Kafka too
            "reply": {protocol.PARTITIONKEY: instance.key, "partition": instance.partition},
        }
        envelope = Envelope(
            type=protocol.TASK_REQUESTED,
            data=request,
            id=attempt_id,
            source=f"/{self._app.name}",
            subject=call.task,
            time=datetime.fromtimestamp(now, UTC),
            # a retry continues the call's trace with a parent of its own (the attempt's
            # send span), so that each attempt is one span
            traceparent=(
                call.traceparent if attempt == 1 else continue_trace(call.traceparent, attempt_id)
            ),
            tenant=call.tenant,
        )
        stage.batch.tasks[attempt_id] = TaskRecord(
            attempt_id, queue, self._codec.to_bytes(envelope), deadline
        )
        due = NO_DEADLINE if timeout is None else now + timeout
        row = WorkRow(
            call.idempotency_key,
            "task",
            due,
            attempt,
            call.instance_id,
            call.seq,
            call.task,
            published_payload(queue),
        )
        self._work.put(stage, row)
        self.open.opened(row.id, queue)
        self._stats["task_attempts"] += 1
        self._observer.task_published(call.task, attempt, call.instance_id, queue)
        if self._observer.traces:
            self._observer.task_requested(call.instance_id, queue, envelope)

    def back_off(self, stage: Stage, row: WorkRow, due: float) -> None:
        """End the published attempt of ``row`` and schedule the next one for ``due``."""
        self._work.end_attempt(stage, row)
        self._work.put(
            stage,
            WorkRow(
                row.id,
                "task",
                due,
                row.attempt + 1,
                row.instance_id,
                row.seq,
                row.name,
                TASK_BACKOFF,
            ),
        )


class Tasks:
    """Applies task results and due task rows to instances (see the module docstring).

    Args:
        attempts: publishes the next attempts.
        work: holds the task rows.
        instances: the instances results resolve.
        observer: told of every attempt that ends and every result dropped.
        stats: the engine's counters (``task_results_dropped``).
    """

    def __init__(
        self,
        attempts: Attempts,
        work: Work,
        instances: Instances,
        observer: Observer,
        stats: dict[str, int],
    ) -> None:
        self._attempts = attempts
        self._work = work
        self._instances = instances
        self._observer = observer
        self._stats = stats

    def result(
        self,
        stage: Stage,
        message: protocol.TaskCompletion | protocol.TaskFailure,
        now: float,
    ) -> str | None:
        """A worker's result arrived on the log: applied if it is the first result of the
        current attempt, before its deadline; else dropped.

        Returns:
            Why the result reached no instance of this engine (a wrong instance id, or
            on Kafka a result appended to another partition than the request's
            ``reply`` named), for the caller to dead-letter; None otherwise.
        """
        row = self._work.get(f"{message.instance_id}:{message.seq}")
        if (
            row is None
            or row.kind != "task"
            or task_state(row) != TASK_PUBLISHED
            or row.attempt != message.attempt
        ):
            if row is None and not self._instances.holds(message.instance_id):
                # nothing to drop it against: a duplicate would find its instance
                return (
                    f"task result: no instance {message.instance_id!r} here; a result must "
                    "be appended with the request's reply (its partitionkey and partition) "
                    "to reach the partition that holds the instance"
                )
            self._drop(message, "not the current attempt of an open call")
            return None
        if row.due <= now:
            # the deadline passed before the engine saw the result: the engine gives the
            # attempt up now, as its due row would have a moment later
            self.due(stage, row, now)
            self._drop(message, "it arrived after the attempt's deadline")
            return None
        assert row.seq is not None  # a task row's
        live = self._instances.live(stage, message.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            # parked: the result cannot be applied; the attempt is run again (a new one,
            # due at once) once fixed code replays the instance
            self._attempts.back_off(stage, row, now)
            self._drop(message, "its instance is parked")
            return None
        call = None if live is None else live.machine.pending_task(row.seq)
        if live is None or call is None:
            self._work.clear(stage, row.id)
            self._drop(message, "its instance no longer waits for it")
            return None
        if isinstance(message, protocol.TaskCompletion):
            self._observer.task_finished(call.task, row.attempt, call.instance_id, "completed")
            self._work.clear(stage, row.id)
            machine = live.machine
            self._instances.drive(
                stage, live, machine.resolve(row.seq, now, ok=message.output), now
            )
            return None
        error = message.error
        self._observer.task_finished(call.task, row.attempt, call.instance_id, "failed")
        self._failed(stage, row, live, call, error.type, error.message, message.retryable, now)
        return None

    def due(self, stage: Stage, row: WorkRow, now: float) -> None:
        """A task row came due: publish the attempt that waited for its backoff or for
        room on its queue, or give up the published one whose deadline passed."""
        assert row.instance_id is not None and row.seq is not None  # a task row's
        kind = task_state(row)
        # a released waiting row holds its room until it publishes or goes
        released = kind == TASK_QUEUED and self._attempts.open.is_released(row.id)
        if kind == TASK_QUEUED and not released:
            return  # not its turn (cannot happen: a waiting row is due only when released)
        live = self._instances.live(stage, row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            # parked: the row stays stored, and runs after a fixed restart; a released
            # one gives its room to the next in line
            if released:
                self._attempts.open.ended(row)
            return
        call = None if live is None else live.machine.pending_task(row.seq)
        if live is None or call is None:
            self._work.clear(stage, row.id)
            return
        if kind in (TASK_BACKOFF, TASK_QUEUED):
            self._attempts.publish(stage, live.row, call, row.attempt, now, released=released)
            return
        # (worded from the row alone: the definition's timeout may have changed since)
        message = f"attempt {row.attempt} got no result by its deadline"
        self._observer.task_finished(call.task, row.attempt, call.instance_id, "timed out")
        self._failed(stage, row, live, call, TIMEOUT, message, True, now)

    def withdraw(self, stage: Stage, instance_id: str, now: float) -> None:
        """End the attempts of the calls an instance no longer waits for: a cancel
        abandons its pending operations at once, while its compensations may run for a
        while before it ends (which would end them too)."""
        live = self._instances.live(stage, instance_id, now, stuck=True)
        if live is None:
            return  # ended: its rows went with it
        for work_id in self._work.of_instance(instance_id):
            row = self._work.get(work_id)
            if (
                row is not None
                and row.kind == "task"
                and row.seq is not None
                and live.machine.pending_task(row.seq) is None
            ):
                self._work.clear(stage, work_id)

    def _failed(
        self,
        stage: Stage,
        row: WorkRow,
        live: Live,
        call: m.TaskCall,
        error_type: str,
        message: str,
        retryable: bool,
        now: float,
    ) -> None:
        """Attempt ``row.attempt`` failed: retried after its backoff, or the call fails."""
        assert row.seq is not None  # a task row's
        _, retry, _ = self._attempts.options(call)
        error = {"type": error_type, "message": message}
        if retryable and _may_retry(retry, error_type, row.attempt):
            due = now + retry.delay(row.attempt)
            live.machine.note_retry(row.seq, row.attempt, error, due, now)
            stage.dirty[live.machine.instance_id] = live
            self._attempts.back_off(stage, row, due)
            return
        self._work.clear(stage, row.id)
        error["attempts"] = str(row.attempt)
        self._instances.drive(stage, live, live.machine.resolve(row.seq, now, err=error), now)

    def _drop(self, message: protocol.TaskCompletion | protocol.TaskFailure, why: str) -> None:
        self._stats["task_results_dropped"] += 1
        attempt_id = protocol.task_attempt_id(message.instance_id, message.seq, message.attempt)
        log.debug("task result of %s dropped: %s", attempt_id, why)
        self._observer.task_result_dropped(attempt_id, why)


def _may_retry(retry: Retry, error_type: str, attempt: int) -> bool:
    """Whether the policy allows another attempt after a worker's error of that type
    name: the worker's exception is not ours to ``isinstance``, so the policy's
    ``non_retryable`` classes (and ``TerminalError``) are compared by name."""
    if attempt >= retry.max_attempts or error_type == "TerminalError":
        return False
    return error_type not in {cls.__name__ for cls in retry.non_retryable}
