"""Running work: durable timers, step attempts, handler runs and task calls, and outcomes.

Every piece of scheduled work has a row (``WorkRow``) that is staged with the batch that
scheduled it and removed with the batch that applies its outcome, which is what makes
steps and handlers at-least-once and their retries durable. :class:`Work` owns those rows
(indexed by due time in ``core.timers.WorkQueue``), hands attempts to the
:class:`~.executor.Executor`, collects their outcomes for the loop, and applies what needs
no instance: handler outcomes, and the rescheduling of a retry. What an outcome does to
an instance is ``Instances``' job.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

from .. import protocol
from ..app import App, HandlerDef
from ..codec import Codec
from ..core import machine as m
from ..core.timers import WorkQueue
from ..core.values import describe_error, to_json
from ..errors import EventError
from ..events import Envelope
from ..ports import WorkRow
from .deadletters import DeadLetters
from .executor import Done, Executor, StepInfo
from .observer import AttemptTrace, Observer
from .staging import Outcome, Stage

STOPPED = "the engine stopped before the attempt ended (it runs again after a restart)"
"""The error of an attempt span ended by the engine's stop (``Work.end_traces``)."""

TASK_PUBLISHED = b"published"
"""The payload of a task row whose attempt is on its queue (``runtime/tasks.py``)."""
TASK_BACKOFF = b"backoff"
"""The payload of a task row whose attempt waits for its retry delay."""
TASK_QUEUED = b"queued"
"""The state of a task row whose attempt waits for room on its queue
(``runtime/backpressure.py``)."""


def task_state(row: WorkRow) -> bytes:
    """A task row's state: ``TASK_PUBLISHED``, ``TASK_BACKOFF`` or ``TASK_QUEUED`` (a
    published or waiting row's payload also names its queue, after a colon)."""
    return (row.payload or b"").split(b":", 1)[0]


class Work:
    """Work rows, attempts and outcomes (see the module docstring).

    Args:
        app: the application (its handlers).
        executor: runs the attempts.
        dead_letters: where a handler run that gives up goes.
        observer: told of every attempt's start and end.
        wake: wakes the loop (an outcome arrived).
    """

    def __init__(
        self,
        app: App,
        codec: Codec,
        executor: Executor,
        dead_letters: DeadLetters,
        observer: Observer,
        wake: Callable[[], None],
    ) -> None:
        self._app = app
        self._codec = codec
        self._executor = executor
        self._dead_letters = dead_letters
        self._observer = observer
        self._traces = observer.traces
        self._wake = wake
        self._queue = WorkQueue()
        # The rows whose attempt runs: a row stays "in flight" until its outcome is
        # applied (not merely reported), so the due-work scan cannot start a second one.
        self._inflight: set[str] = set()
        # the spans of the attempts running (tracing only), ended by their outcome, or by
        # end_traces when the engine stops first
        self._attempt_traces: dict[str, AttemptTrace] = {}
        self._outcomes: deque[Outcome] = deque()
        self._stopping = False
        self.task_ended: Callable[[WorkRow], None] = lambda row: None
        """Told of every task row whose state ends (``end_attempt``): the engine's
        ``OpenTasks`` counts the open attempts of each queue with it."""

    # -- state -------------------------------------------------------------------------

    def load(self, rows: list[WorkRow]) -> None:
        """Index the stored work rows (at start)."""
        self._queue = WorkQueue(rows)

    def stop_starting(self) -> None:
        """Start no more attempts: work scheduled from now on keeps its row and runs
        after a restart."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def get(self, work_id: str) -> WorkRow | None:
        return self._queue.get(work_id)

    def of_instance(self, instance_id: str) -> list[str]:
        return self._queue.of_instance(instance_id)

    def next_due(self) -> float | None:
        """When the next row not in flight is due (None: no such row)."""
        return self._queue.next_due(self._inflight)

    def pop_due(self, now: float) -> list[WorkRow]:
        """The rows due by ``now`` that are not in flight, taken off the schedule."""
        return list(self._queue.pop_due(now, self._inflight))

    # -- outcomes ----------------------------------------------------------------------

    def report(self, outcome: Outcome) -> None:
        """Queue an outcome for the loop and wake it."""
        self._outcomes.append(outcome)
        self._wake()

    def has_outcomes(self) -> bool:
        return bool(self._outcomes)

    def next_outcome(self) -> Outcome | None:
        """The oldest reported outcome not yet applied, removed; None if there is none."""
        return self._outcomes.popleft() if self._outcomes else None

    def unstored(self) -> list[Outcome]:
        """Reported eager first attempts that have no stored row yet."""
        return [outcome for outcome in self._outcomes if not outcome.stored]

    def current(self, outcome: Outcome) -> WorkRow | None:
        """The row an outcome of a stored attempt is for, or None if the outcome is
        stale (the work was cancelled, or an older attempt's outcome came late)."""
        self._inflight.discard(outcome.work_id)
        row = self._queue.get(outcome.work_id)
        if row is None or row.attempt != outcome.attempt:
            return None  # stale: the work was cancelled or already moved on
        return row

    def _reporter(
        self,
        work_id: str,
        attempt: int,
        info: StepInfo,
        began: float,
        trace: AttemptTrace | None = None,
        *,
        stored: bool = True,
    ) -> Done:
        observer = self._observer
        traces = self._attempt_traces
        if trace is not None:
            traces[work_id] = trace

        def done(ok: bool, value: Any) -> None:
            observer.step_finished(info.name, attempt, info.instance_id, ok, monotonic() - began)
            if trace is not None and traces.pop(work_id, None) is not None:
                trace.end(ok, None if ok else value)
            self.report(Outcome(work_id, attempt, ok, value, stored, began))

        return done

    def end_traces(self) -> None:
        """End the spans of the attempts still running when the engine let go of them (it
        stopped, or was abandoned): they end failed, as the attempt runs again after a
        restart; an outcome reported later ends nothing twice."""
        traces, self._attempt_traces = self._attempt_traces, {}
        for trace in traces.values():
            trace.end(False, RuntimeError(STOPPED))

    # -- rows --------------------------------------------------------------------------

    def put(self, stage: Stage, row: WorkRow, *, schedule: bool = True) -> None:
        """Stage and index a work row; ``schedule=False`` for one the caller runs at once
        (it is stored all the same, for a restart, but skips the due-time heap)."""
        # a step's retry replaces its stored row: only a row the queue lacks is new
        stage.work.put(row.id, row, created=row.id not in self._queue)
        self._queue.put(row, schedule=schedule)

    def clear(self, stage: Stage, work_id: str) -> None:
        """Remove a row; a task's published attempt ends with it (whoever removes it: a
        result, a failure, or the end of its instance)."""
        row = self._queue.remove(work_id)
        if row is not None:
            stage.work.delete(work_id)
            self.end_attempt(stage, row)

    def end_attempt(self, stage: Stage, row: WorkRow) -> None:
        """End the queue entry of a task row's published attempt (none for other rows):
        no worker claims it any more and the queue refuses a result for it."""
        if row.kind != "task":
            return
        if task_state(row) == TASK_PUBLISHED:
            assert row.instance_id is not None and row.seq is not None  # a task row's
            attempt_id = protocol.task_attempt_id(row.instance_id, row.seq, row.attempt)
            stage.batch.tasks[attempt_id] = None
        self.task_ended(row)

    def release(self, work_id: str) -> None:
        """Make a waiting task row due at once, in memory only: its stored row keeps its
        far-future due time, and a restart releases it again if it still waits."""
        row = self._queue.get(work_id)
        if row is not None:
            self._queue.put(dataclasses.replace(row, due=0.0))

    def reschedule(self, stage: Stage, row: WorkRow, due: float) -> None:
        """The next attempt of ``row``, due at ``due``."""
        retry_row = WorkRow(
            row.id, row.kind, due, row.attempt + 1, row.instance_id, row.seq, row.name, row.payload
        )
        self.put(stage, retry_row)

    def may_start(self, row: WorkRow) -> bool:
        """Whether an attempt of this row may start now."""
        # when stopping, the work row stays and the attempt runs after restart
        return row.id not in self._inflight and not self._stopping

    # -- steps -------------------------------------------------------------------------

    def start_step(
        self, stage: Stage, call: m.StepCall, now: float, *, process: str | None = None
    ) -> tuple[bool, Any]:
        """The first attempt of a new step.

        An async step that returns without suspending (the common trivial step) never
        gets a work row: the row would be added and removed in the same commit. Its
        result is returned as ``(True, value)`` for the caller to apply at once while the
        batch's inline budget lasts, else queued as an outcome of this batch. Anything
        else gets its stored row at once and ``(False, None)`` is returned.
        """
        work_id = call.idempotency_key  # "<instance>:<seq>", as the work row's id
        name, iid = call.name, call.instance_id
        if self._stopping:  # runs after the restart
            self.put(stage, WorkRow(work_id, "step", now, 1, iid, call.seq, name))
            return False, None
        observer = self._observer
        info = StepInfo(work_id, 1, iid, name, process)
        observer.step_started(name, 1, iid)
        trace = observer.attempt_trace("step", name, 1, iid, None) if self._traces else None
        began = monotonic()
        traces = self._attempt_traces

        def done(ok: bool, value: Any) -> None:  # for a call that suspended
            observer.step_finished(name, 1, iid, ok, monotonic() - began)
            if trace is not None and traces.pop(work_id, None) is not None:
                trace.end(ok, None if ok else value)
            self.report(Outcome(work_id, 1, ok, value, True, began))

        if trace is not None:  # ended with its outcome, or at stop if it runs on
            traces[work_id] = trace
        # (the hot path of every trivial step: no work row is made unless it is stored)
        eager = self._executor.start(
            call.fn,
            call.args,
            call.kwargs,
            info,
            call.timeout,
            done,
            inline=call.inline,
            enter=None if trace is None else trace.enter,
        )
        if eager is not None:
            observer.step_finished(name, 1, iid, eager[0], monotonic() - began)
            if trace is not None and traces.pop(work_id, None) is not None:
                trace.end(eager[0], None if eager[0] else eager[1])
            if eager[0]:
                try:
                    value = to_json(eager[1])
                except Exception as exc:
                    eager = (False, TypeError(f"step result is not JSON-serializable: {exc}"))
                else:
                    if stage.inline_budget > 0:
                        stage.inline_budget -= 1
                        return True, value
                    self._outcomes.append(Outcome(work_id, 1, True, value, False, began))
                    return False, None
        self.put(stage, WorkRow(work_id, "step", now, 1, iid, call.seq, name))
        self._inflight.add(work_id)
        if eager is not None:  # failed at once: retried (or failed for good) through its row
            self._outcomes.append(Outcome(work_id, 1, eager[0], eager[1], True, began))
        return False, None

    def attempt_step(self, row: WorkRow, call: m.StepCall, *, process: str | None = None) -> None:
        """Start an attempt of a stored step row (a retry, or a step reloaded at start)."""
        assert row.instance_id is not None  # a step row belongs to an instance
        info = StepInfo(call.idempotency_key, row.attempt, row.instance_id, call.name, process)
        self._inflight.add(row.id)
        began = monotonic()
        observer = self._observer
        observer.step_started(call.name, row.attempt, row.instance_id)
        trace = (
            observer.attempt_trace("step", call.name, row.attempt, row.instance_id, None)
            if self._traces
            else None
        )
        done = self._reporter(row.id, row.attempt, info, began, trace)
        outcome = self._executor.start(
            call.fn,
            call.args,
            call.kwargs,
            info,
            call.timeout,
            done,
            inline=call.inline,
            enter=None if trace is None else trace.enter,
        )
        if outcome is not None:
            done(*outcome)

    def store_eager(self, stage: Stage, outcome: Outcome, call: m.StepCall, now: float) -> None:
        """Give an eager first attempt left over by the inline budget its stored row, or
        a crash after this commit would leave its step scheduled but never run."""
        row = WorkRow(outcome.work_id, "step", now, 1, call.instance_id, call.seq, call.name)
        self.put(stage, row)
        self._inflight.add(outcome.work_id)
        outcome.stored = True

    # -- handlers ----------------------------------------------------------------------

    def schedule_handler(
        self, stage: Stage, handler: HandlerDef, envelope: Envelope, raw: bytes, now: float
    ) -> None:
        """A handler run for an event: a durable row, its first attempt started now."""
        row = WorkRow(
            f"h:{handler.name}:{envelope.id}", "handler", now, 1, None, None, handler.name, raw
        )
        if row.id in self._queue:
            return  # already scheduled for this event
        self.put(stage, row, schedule=False)
        self.run_handler(stage, row, now)

    def replay_handler(
        self, stage: Stage, run_id: str, handler: HandlerDef, payload: bytes, now: float
    ) -> None:
        """Run a dead-lettered handler run again, as a fresh first attempt."""
        row = WorkRow(run_id, "handler", now, 1, None, None, handler.name, payload)
        self.put(stage, row, schedule=False)
        self.run_handler(stage, row, now)

    def run_handler(self, stage: Stage, row: WorkRow, now: float) -> None:
        """Start one attempt of a handler run."""
        if not self.may_start(row):
            return
        handler = self._app.handler(row.name or "")
        if handler is None:
            reason = f"handler {row.name!r} is not registered in this app"
            self._give_up(stage, row, reason, row.attempt - 1, now)
            return
        try:
            event = self._codec.event(self._codec.from_bytes(row.payload or b""))
        except EventError as error:
            self._give_up(stage, row, str(error), row.attempt - 1, now)
            return
        attempt = row.attempt
        info = StepInfo(f"{handler.name}:{event.envelope.id}", attempt, None, handler.name)
        self._inflight.add(row.id)
        began = monotonic()
        observer = self._observer
        observer.step_started(handler.name, attempt, None)
        trace = (
            observer.attempt_trace(
                "handler", handler.name, attempt, None, event.envelope.traceparent
            )
            if self._traces
            else None
        )
        done = self._reporter(row.id, attempt, info, began, trace)
        outcome = self._executor.start(
            handler.fn,
            (event,),
            {},
            info,
            None,
            done,
            enter=None if trace is None else trace.enter,
        )
        if outcome is not None:
            done(*outcome)

    def handler_outcome(self, stage: Stage, row: WorkRow, outcome: Outcome, now: float) -> None:
        """Apply a handler attempt's outcome: done, retried, or dead-lettered."""
        if outcome.ok:
            self.clear(stage, row.id)
            return
        handler = self._app.handler(row.name or "")
        error = outcome.value
        if handler is not None and handler.retry.retryable(error, row.attempt):
            self.reschedule(stage, row, now + handler.retry.delay(row.attempt))
            return
        described = describe_error(error)
        reason = f"{described['type']}: {described['message']}"
        self._give_up(stage, row, reason, row.attempt, now)

    def _give_up(self, stage: Stage, row: WorkRow, reason: str, attempts: int, now: float) -> None:
        """Give up on a handler run: its work row goes, its event goes to the DLQ."""
        self.clear(stage, row.id)
        self._dead_letters.add(
            stage,
            row.id,
            f"handler:{row.name}",
            reason,
            None,
            None,
            now,
            payload=row.payload,
            attempts=attempts,
        )
