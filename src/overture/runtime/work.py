"""Running work: durable timers, step attempts and handler runs, and their outcomes.

A mixin of :class:`~overture.runtime.engine.Engine`, kept apart because it is one idea:
every piece of scheduled work has a row (``WorkRow``) that is stored with the batch that
scheduled it and removed with the batch that applies its outcome, which is what makes
steps and handlers at-least-once and their retries durable.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any

from ..app import App, HandlerDef
from ..codec import Codec
from ..core import machine as m
from ..core.correlation import WaitIndex
from ..core.timers import WorkQueue
from ..core.values import describe_error, to_json
from ..errors import EventError
from ..events import Envelope
from ..ports import Record, Store, WaitRow, WorkRow
from .batch import Live, Outcome, PendingBatch
from .executor import Executor, StepInfo
from .remote import RemoteWaits


class WorkRunner(RemoteWaits):
    """Timers, steps and handlers for the engine (see the module docstring)."""

    # State and operations provided by the engine.
    app: App
    codec: Codec
    executor: Executor
    _pending: PendingBatch | None
    _work: WorkQueue
    _waits: WaitIndex
    _inflight: set[str]
    _outcomes: deque[Outcome]
    _wake: asyncio.Event
    _stopping: bool
    _dirty: dict[str, Live]
    _cache: OrderedDict[str, Live]
    _inline_budget: int
    _store: Store

    def _dead_letter(
        self,
        dl_id: str,
        source: str,
        reason: str,
        envelope: Envelope | None,
        record: Record | None,
        now: float,
        *,
        payload: bytes | None = None,
        attempts: int = 0,
    ) -> None:
        raise NotImplementedError

    def _put_work(self, row: WorkRow, *, start_now: bool = False) -> None:
        """Stage and index a work row; with ``start_now`` the caller executes it at once,
        so it skips the due-time heap (it is stored all the same, for a restart)."""
        assert self._pending is not None
        # a step's retry replaces its stored row: only a row the queue lacks is new
        self._pending.work.put(row.id, row, created=row.id not in self._work)
        self._work.put(row, schedule=not start_now)
        if start_now:
            self._execute(row, row.due)

    def _clear_work(self, work_id: str) -> None:
        if self._work.remove(work_id) is not None:
            assert self._pending is not None
            self._pending.work.delete(work_id)

    def _clear_wait(self, wait: WaitRow, *, withdraw: bool = True) -> None:
        """Forget a wait (and its timeout). ``withdraw``: also cancel its subscription on
        another partition, if it has one (not needed once that partition delivered)."""
        assert self._pending is not None
        self._pending.waits.delete(wait)
        self._waits.remove(wait)
        if withdraw and wait.home is None and self._foreign(wait.key):
            self._unsubscribe_remote(wait)
        # a wait's timeout timer shares its id
        timer = self._work.get(f"{wait.instance_id}:{wait.seq}")
        if timer is not None and timer.kind == "timer":
            self._clear_work(timer.id)

    def _read_ahead(self, instance_ids: set[str]) -> None:
        """Read the evicted ones among these instances in bulk (three queries for all of
        them rather than three each), for ``_load`` to rebuild them from."""
        assert self._pending is not None
        wanted = [i for i in instance_ids if i not in self._cache]
        if wanted:
            self._pending.snapshots.update(self._store.snapshots(wanted))

    def _take_due(self, now: float) -> bool:
        did = False
        rows = list(self._work.pop_due(now, self._inflight))
        self._read_ahead({r.instance_id for r in rows if r.instance_id})
        for row in rows:
            did = True
            if row.kind == "timer":
                self._fire_timer(row, now)
            else:
                self._execute(row, now)
        return did

    def _fire_timer(self, row: WorkRow, now: float) -> None:
        assert row.instance_id is not None and row.seq is not None
        live = self._live(row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            return  # parked: the timer stays stored and fires after a fixed restart
        self._clear_work(row.id)
        if live is None:
            return
        machine = live.machine
        wait = machine.pending_wait(row.seq)
        if wait is not None:
            for candidate in self._waits.of_instance(row.instance_id):
                if candidate.seq == row.seq:
                    self._clear_wait(candidate)
            error = {"type": "WaitTimeout", "message": f"no {wait[0]!r} with key {wait[1]!r}"}
            self._drive(live, machine.resolve(row.seq, now, err=error), now)
        else:
            self._drive(live, machine.resolve(row.seq, now, ok=None), now)

    def _execute(self, row: WorkRow, now: float) -> None:
        """Start one attempt of a step or handler."""
        if row.id in self._inflight or self._stopping:
            return  # when stopping, the work row stays and the attempt runs after restart
        attempt = row.attempt

        # The row stays "in flight" until its outcome is applied (not merely reported),
        # so the due-work scan cannot start a second attempt meanwhile.
        def done(ok: bool, value: Any) -> None:
            self._outcomes.append(Outcome(row.id, attempt, ok, value))
            self._wake.set()

        if row.kind == "step":
            assert row.instance_id is not None and row.seq is not None
            live = self._live(row.instance_id, now, stuck=True)
            if live is not None and live.machine.stuck_reason is not None:
                return  # parked: the step runs again once the code is fixed
            call = None if live is None else live.machine.pending_step(row.seq)
            if call is None:
                self._clear_work(row.id)
                return
            info = StepInfo(call.idempotency_key, attempt, row.instance_id, call.name)
            self._inflight.add(row.id)
            outcome = self.executor.start(
                call.fn, call.args, call.kwargs, info, call.timeout, done, inline=call.inline
            )
        else:
            handler = self.app.handler(row.name or "")
            if handler is None:
                reason = f"handler {row.name!r} is not registered in this app"
                self._dead_letter_handler_run(row, reason, attempt - 1, now)
                return
            try:
                event = self.codec.event(self.codec.from_bytes(row.payload or b""))
            except EventError as error:
                self._dead_letter_handler_run(row, str(error), attempt - 1, now)
                return
            info = StepInfo(f"{handler.name}:{event.envelope.id}", attempt, None, handler.name)
            self._inflight.add(row.id)
            outcome = self.executor.start(handler.fn, (event,), {}, info, None, done)
        if outcome is not None:
            done(*outcome)

    def _start_step(self, call: m.StepCall, now: float) -> tuple[bool, Any]:
        """The first attempt of a new step.

        An async step that returns without suspending (the common trivial step) never
        gets a work row: the row would be added and removed in the same commit. Its
        result is returned as ``(True, value)`` for the caller to apply at once while the
        batch's inline budget lasts, else queued as an outcome of this batch. Anything
        else gets its stored row at once and ``(False, None)`` is returned.
        """
        work_id = call.idempotency_key  # "<instance>:<seq>", as the work row's id
        if self._stopping:  # runs after the restart
            self._put_work(WorkRow(work_id, "step", now, 1, call.instance_id, call.seq, call.name))
            return False, None

        def done(ok: bool, value: Any) -> None:  # for a call that suspended
            self._outcomes.append(Outcome(work_id, 1, ok, value))
            self._wake.set()

        info = StepInfo(work_id, 1, call.instance_id, call.name)
        eager = self.executor.start(
            call.fn, call.args, call.kwargs, info, call.timeout, done, inline=call.inline
        )
        if eager is not None and eager[0]:
            try:
                value = to_json(eager[1])
            except Exception as exc:
                eager = (False, TypeError(f"step result is not JSON-serializable: {exc}"))
            else:
                if self._inline_budget > 0:
                    self._inline_budget -= 1
                    return True, value
                self._outcomes.append(Outcome(work_id, 1, True, value, stored=False))
                return False, None
        self._put_work(WorkRow(work_id, "step", now, 1, call.instance_id, call.seq, call.name))
        self._inflight.add(work_id)
        if eager is not None:  # failed at once: retried (or failed for good) through its row
            self._outcomes.append(Outcome(work_id, 1, *eager))
        return False, None

    def _schedule_handler(
        self, handler: HandlerDef, envelope: Envelope, raw: bytes, now: float
    ) -> None:
        row = WorkRow(
            f"h:{handler.name}:{envelope.id}", "handler", now, 1, None, None, handler.name, raw
        )
        if row.id in self._work:
            return  # already scheduled for this event
        self._put_work(row, start_now=True)

    def _store_eager(self, outcome: Outcome, now: float) -> None:
        iid, _, seq = outcome.work_id.rpartition(":")
        live = self._cache.get(iid)
        call = None if live is None else live.machine.pending_step(int(seq))
        if call is not None:
            row = WorkRow(outcome.work_id, "step", now, 1, iid, int(seq), call.name)
            self._put_work(row)
            self._inflight.add(outcome.work_id)
            outcome.stored = True

    def _apply_outcome(self, outcome: Outcome, now: float) -> None:
        if not outcome.stored:
            iid, _, seq = outcome.work_id.rpartition(":")
            live = self._live(iid, now)
            if live is not None and live.machine.pending_step(int(seq)) is not None:
                self._drive(live, live.machine.resolve(int(seq), now, ok=outcome.value), now)
            return
        self._inflight.discard(outcome.work_id)
        row = self._work.get(outcome.work_id)
        if row is None or row.attempt != outcome.attempt:
            return  # stale: the work was cancelled or already moved on
        if row.kind == "handler":
            self._handler_outcome(row, outcome, now)
            return
        assert row.instance_id is not None and row.seq is not None
        live = self._live(row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            return  # parked: the outcome is dropped; the step runs again after a fix
        call = None if live is None else live.machine.pending_step(row.seq)
        if live is None or call is None:
            self._clear_work(row.id)
            return
        if outcome.ok:
            try:
                value = to_json(outcome.value)
            except Exception as exc:
                outcome = Outcome(
                    row.id,
                    row.attempt,
                    False,
                    TypeError(f"step result is not JSON-serializable: {exc}"),
                )
            else:
                self._clear_work(row.id)
                self._drive(live, live.machine.resolve(row.seq, now, ok=value), now)
                return
        error = outcome.value
        described = describe_error(error)
        if call.retry.retryable(error, row.attempt):
            due = now + call.retry.delay(row.attempt)
            live.machine.note_retry(row.seq, row.attempt, described, due, now)
            self._dirty[row.instance_id] = live
            self._reschedule(row, due)
            return
        self._clear_work(row.id)
        described["attempts"] = str(row.attempt)
        self._drive(live, live.machine.resolve(row.seq, now, err=described), now)

    def _handler_outcome(self, row: WorkRow, outcome: Outcome, now: float) -> None:
        if outcome.ok:
            self._clear_work(row.id)
            return
        handler = self.app.handler(row.name or "")
        error = outcome.value
        if handler is not None and handler.retry.retryable(error, row.attempt):
            self._reschedule(row, now + handler.retry.delay(row.attempt))
            return
        described = describe_error(error)
        reason = f"{described['type']}: {described['message']}"
        self._dead_letter_handler_run(row, reason, row.attempt, now)

    def _dead_letter_handler_run(
        self, row: WorkRow, reason: str, attempts: int, now: float
    ) -> None:
        """Give up on a handler run: its work row goes, its event goes to the DLQ."""
        self._clear_work(row.id)
        self._dead_letter(
            row.id,
            f"handler:{row.name}",
            reason,
            None,
            None,
            now,
            payload=row.payload,
            attempts=attempts,
        )

    def _reschedule(self, row: WorkRow, due: float) -> None:
        retry_row = WorkRow(
            row.id, row.kind, due, row.attempt + 1, row.instance_id, row.seq, row.name, row.payload
        )
        assert self._pending is not None
        self._put_work(retry_row)

    # -- dead letters -------------------------------------------------------------------------
