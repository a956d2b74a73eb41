"""The sans-IO state machine of one process instance.

Inputs go in (``start``, ``resolve``, ``replay``), journal entries and commands come out
(``take_entries``, the returned command lists). Nothing here does I/O or touches asyncio:
the process coroutine is driven by hand with ``coro.send`` (design option A of
``shared/notes/durable-execution.md``), by a tiny FIFO scheduler of our own, so the order in
which code runs depends only on the order of inputs, which the journal records.

Replay feeds the journal's input entries (``start``, ``res``) back in order; every
command the code issues is matched against the next recorded ``cmd`` entry (operation and
name). Any difference parks the instance as ``stuck`` with the expected vs. requested
operation in the reason. Rejected alternative: a custom asyncio loop per instance
(Temporal's design). It lets process code use ``asyncio.gather`` but costs a loop object per
instance and the private ``_set_running_loop``; ``ctx.gather`` covers the need.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Coroutine
from typing import Any, NoReturn, TypeVar

from ..codec import Codec
from ..errors import EventError, NonDeterminismError, StepFailed, TaskFailed, WaitTimeout
from ..events import Envelope, Event
from . import journal as jr
from .commands import (
    Abandon,
    Command,
    EmitEvent,
    Finished,
    ProcessSpec,
    ScheduleStep,
    ScheduleTask,
    StartTimer,
    StartWait,
    StepCall,
    TaskCall,
)
from .futures import Compensation, Future, Pending
from .identity import instance_id_for, legacy_instance_id_for, trigger_instance_ids
from .machine_context import MachineContext
from .status import FINAL, Status
from .values import describe_error, identity, snapshot, to_json

T = TypeVar("T")

# The commands (``commands.py``) and instance ids (``identity.py``) live in their own
# modules; the runtime reads them here, beside the machine that issues them.
__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINAL_STATUSES",
    "RUNNING",
    "STUCK",
    "WAITING",
    "Abandon",
    "Command",
    "EmitEvent",
    "Finished",
    "Machine",
    "ProcessSpec",
    "ScheduleStep",
    "ScheduleTask",
    "StartTimer",
    "StartWait",
    "StepCall",
    "TaskCall",
    "instance_id_for",
    "legacy_instance_id_for",
    "private_copy",
    "trigger_instance_ids",
]

# The statuses by their short names, as the runtime and the tests read them; one
# definition: ``core/status.py``.
RUNNING, WAITING, COMPLETED, FAILED, CANCELLED, STUCK = (
    Status.RUNNING,
    Status.WAITING,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
    Status.STUCK,
)
FINAL_STATUSES = FINAL
_PLAIN = Codec()
"""The codec of a machine given none: plain events for untyped contracts, no hooks."""


def private_copy(envelope: Envelope) -> Envelope:
    """The envelope with a deep copy of its data: what process code gets of an event,
    so that mutating it changes neither the journal nor what another instance sees."""
    return envelope.with_data(snapshot(envelope.data))


# -- tasks ----------------------------------------------------------------------------------


class _Task:
    """A coroutine driven by the machine's scheduler."""

    __slots__ = ("coro", "future", "machine")

    def __init__(self, machine: Machine, coro: Coroutine[Any, Any, Any]) -> None:
        self.machine = machine
        self.coro = coro
        self.future: Future[Any] = Future()

    def wake(self) -> None:
        self.machine._ready.append(self)

    def step(self) -> None:
        machine = self.machine
        machine._current = self  # only while its coroutine runs (it cannot be closed then)
        try:
            yielded = self.coro.send(None)
        except StopIteration as stop:
            machine._current = None
            machine._task_done(self)
            self.future.set_result(stop.value)
        except (NonDeterminismError, KeyboardInterrupt):
            machine._current = None
            raise
        except BaseException as error:  # process code's failure, whatever it raised
            machine._current = None
            machine._task_done(self)
            self.future.set_error(error)
        else:
            machine._current = None
            if isinstance(yielded, Future):
                yielded.add_callback(self.wake)
            else:
                machine._diverge(
                    f"process code awaited {yielded!r}; only ctx operations may be awaited "
                    "in process code (run other async code inside a step)"
                )


# -- the machine ----------------------------------------------------------------------------


class Machine:
    """One process instance: its journal, its suspended coroutine, and its pending work."""

    # Thousands are cached at once: slots keep each one small.
    __slots__ = (
        "__weakref__",
        "_closing",
        "_codec",
        "_commands",
        "_compensating",
        "_compensations",
        "_current",
        "_cursor",
        "_keep_journal",
        "_new",
        "_next_seq",
        "_now",
        "_pending",
        "_ready",
        "_replay",
        "_rng_state",
        "_tasks",
        "_tenant",
        "_trace",
        "_trigger",
        "error",
        "instance_id",
        "journal",
        "key",
        "result",
        "spec",
        "status",
        "stuck_reason",
    )

    def __init__(
        self,
        spec: ProcessSpec,
        instance_id: str,
        key: str | None,
        *,
        keep_journal: bool = True,
        codec: Codec | None = None,
    ) -> None:
        """``keep_journal=False`` (the engine's choice) keeps only entries not yet taken by
        :meth:`take_entries`: the store has the rest, and a cached instance then costs
        no more memory as its history grows.

        ``codec``: makes the typed events the code gets, the trigger and every waited-for
        event, live and on replay (the engine passes its own, so what plugs into it, an
        upcaster say, applies to old journals too); default: a codec without contracts."""
        self.spec = spec
        self._codec = _PLAIN if codec is None else codec
        self.instance_id = instance_id
        self.key = key
        self.status = RUNNING
        self.stuck_reason: str | None = None
        self.result: Any = None
        self.error: dict[str, str] | None = None
        self.journal: list[jr.Entry] = []
        self._keep_journal = keep_journal
        self._new: list[jr.Entry] = []
        self._commands: list[Command] = []
        self._pending: dict[int, Pending] = {}
        self._compensations: list[Compensation] = []
        # plain lists: an instance rarely has more than a few tasks, and an empty deque
        # or set costs several hundred bytes per cached instance
        self._ready: list[_Task] = []
        self._tasks: list[_Task] = []
        self._next_seq = 1
        self._now = 0.0
        self._rng_state: random.Random | None = None  # ~5 KB: created on first use
        self._replay: list[jr.Entry] | None = None
        self._cursor = 0
        self._current: _Task | None = None
        self._closing = False
        self._compensating = False
        self._trigger: Envelope | Event | None = None
        # the trigger's context, which the events this instance emits carry on
        self._trace: str | None = None
        self._tenant: str | None = None

    # -- inputs -------------------------------------------------------------------------

    def start(self, envelope: Envelope, now: float, event: Event | None = None) -> list[Command]:
        """Begin a new instance for its trigger event.

        ``event``: the trigger already decoded into the process's event class by the
        caller, *from its own copy of the data* (``event.envelope.data`` shares nothing
        with ``envelope.data``), so that it is the code's alone; None decodes it here.
        """
        # the journal keeps ``envelope``, which nothing hands to code
        self._trigger = private_copy(envelope) if event is None else event
        entry = {
            "k": "start",
            "t": now,
            "ev": self._codec.to_journal(envelope),
            "fmt": jr.FORMAT,
            "v": self.spec.version,
        }
        self._append(entry)
        return self._activate(entry)

    def replay(self, journal: list[jr.Entry]) -> list[Command]:
        """Rebuild in-memory state (coroutine, pending operations) from a journal.

        Recorded commands are not re-issued: their effects (waits, timers, work rows) are
        already stored. Returns only commands the code issued *past the end* of the
        journal (possible after a code change that appends work). On divergence the
        machine ends up ``stuck`` with the reason.
        """
        self.journal = list(journal) if self._keep_journal else []
        self._replay = journal
        self._cursor = 0
        try:
            while self._cursor < len(journal) and self.stuck_reason is None:
                entry = journal[self._cursor]
                kind = entry["k"]
                self._cursor += 1
                if kind in jr.INPUT_KINDS:
                    self._activate(entry)
                    self._commands.clear()  # effects of recorded commands are stored
                elif kind == "retry":
                    continue
                elif kind == "end" and entry["st"] == CANCELLED:
                    self._close_tasks()
                    self._set_final(CANCELLED, None, None)
                else:
                    self._diverge(
                        f"the journal recorded {jr.describe(entry)!r} but the code "
                        "did not request it"
                    )
        except NonDeterminismError:
            pass
        finally:
            self._replay = None
        if self.stuck_reason is not None:
            self._commands.clear()
        return self._flush()

    def resolve(
        self, seq: int, now: float, *, ok: Any = None, err: dict[str, str] | None = None
    ) -> list[Command]:
        """Deliver the outcome of operation ``seq``; ignored if it is no longer pending."""
        if seq not in self._pending or self.status in FINAL_STATUSES or self.stuck_reason:
            return []
        entry: jr.Entry = {"k": "res", "t": now, "s": seq}
        if err is not None:
            entry["err"] = err
        else:
            entry["ok"] = ok
        self._append(entry)
        return self._activate(entry)

    def note_retry(
        self, seq: int, attempt: int, error: dict[str, str], due: float, now: float
    ) -> None:
        """Journal a failed attempt that will be retried (for humans reading the timeline)."""
        self._append({"k": "retry", "t": now, "s": seq, "a": attempt, "err": error, "due": due})

    def cancel(self, now: float) -> list[Command]:
        """Cancel the instance: its pending operations are abandoned, its registered
        compensations run (newest first, as durable steps), then it ends ``cancelled``.

        A stuck instance ends at once: its code cannot be trusted to compensate.
        """
        if self.status in FINAL_STATUSES or self._compensating:
            return []  # already winding down: it ends once its compensations have run
        if self.stuck_reason is not None:
            self._append({"k": "end", "t": now, "st": CANCELLED})
            self._set_final(CANCELLED, None, None)
            return [Finished(CANCELLED)]
        entry = {"k": "cancel", "t": now}
        self._append(entry)
        return self._activate(entry)

    def park(self, reason: str) -> None:
        """Park the instance as stuck for a reason the runtime found (its version is not
        registered in this app, say): it takes no input until fixed code replays it."""
        self.stuck_reason = reason
        self.status = STUCK

    def close(self) -> None:
        """Drop the coroutines (cache eviction); the journal keeps everything.

        Also breaks the machine's reference cycles (context, futures' callbacks), so an
        evicted instance is freed at once by reference counting instead of waiting for
        the cyclic garbage collector, which with 100k instances in memory is slow.
        """
        self._close_tasks()
        self._current = None
        self._pending.clear()
        self._compensations.clear()
        self._trigger = None

    def take_entries(self) -> list[jr.Entry]:
        """Journal entries appended since the last call."""
        new, self._new = self._new, []
        return new

    # -- queries ------------------------------------------------------------------------

    @property
    def trace(self) -> str | None:
        """The ``traceparent`` of the event that started the instance (None: it had none)."""
        return self._trace

    def steps_running(self, besides: Container[int] = ()) -> bool:
        """Whether a step of the instance is scheduled and not resolved yet (one of
        ``besides`` not counted)."""
        return any(p.call is not None and s not in besides for s, p in self._pending.items())

    def pending_step(self, seq: int) -> StepCall | None:
        pending = self._pending.get(seq)
        return None if pending is None else pending.call

    def pending_task(self, seq: int) -> TaskCall | None:
        """The remote task call ``seq``, while the code still waits for its result."""
        pending = self._pending.get(seq)
        return None if pending is None else pending.task

    def pending_wait(self, seq: int) -> tuple[str, str | None] | None:
        pending = self._pending.get(seq)
        return None if pending is None else pending.wait

    @property
    def rng(self) -> random.Random:
        """The instance's deterministic random stream (seeded by its id)."""
        if self._rng_state is None:
            self._rng_state = random.Random(self.instance_id)
        return self._rng_state

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    # -- driving the code ---------------------------------------------------------------

    def _activate(self, entry: jr.Entry) -> list[Command]:
        try:
            self._apply_input(entry)
        except NonDeterminismError:
            return self._flush()
        self._run()
        return self._flush()

    def _apply_input(self, entry: jr.Entry) -> None:
        self._now = entry["t"]
        if entry["k"] == "cancel":
            self._close_tasks()
            self._closing = False
            self._pending.clear()
            self._spawn(self._compensate_then(CANCELLED, None))
        elif entry["k"] == "start":
            source, self._trigger = self._trigger, None
            cls = self.spec.event_class
            try:
                if source is None:  # replay: from the journal (a private copy of it)
                    event = self._codec.from_journal(snapshot(entry["ev"]), cls)
                elif isinstance(source, Envelope):
                    event = self._codec.typed(source, cls)
                else:  # decoded by the engine (through the same codec)
                    event = source
            except EventError as error:
                self._diverge(f"the journaled trigger no longer fits {cls.__name__}: {error}")
            self._trace, self._tenant = event.envelope.traceparent, event.envelope.tenant
            # the context lives in the coroutine's frame, not on the machine: no cycle
            main = self._spawn(self.spec.fn(MachineContext(self), event))
            main.future.add_callback(lambda: self._main_done(main.future))
        else:
            pending = self._pending.pop(entry["s"], None)
            if pending is None:
                self._diverge(
                    f"the journal resolves operation #{entry['s']}, which the code never requested"
                )
            if "err" in entry:
                pending.future.set_error(self._error_for(pending, entry["err"]))
            else:
                try:
                    # a private copy: code that mutates it must not change the journal
                    # (or what another instance fed by the same event sees)
                    value = pending.convert(snapshot(entry.get("ok")))
                except Exception as error:
                    pending.future.set_error(error)
                else:
                    pending.future.set_result(value)

    def _run(self) -> None:
        try:
            while self._ready and self.stuck_reason is None:
                self._ready.pop(0).step()
        except NonDeterminismError:
            pass  # stuck_reason is set; the journal is left as it was
        if self.stuck_reason is None and not self.final:
            self._update_status()

    def _flush(self) -> list[Command]:
        commands, self._commands = self._commands, []
        return commands

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> _Task:
        task = _Task(self, coro)
        self._tasks.append(task)
        self._ready.append(task)
        return task

    def _main_done(self, future: Future[Any]) -> None:
        error = future._error
        if error is None:
            try:
                result = to_json(future._result)
            except Exception as exc:
                error = TypeError(f"the process returned a value that is not JSON: {exc}")
            else:
                self._finish(COMPLETED, result=result)
                return
        if self._compensations:
            self._spawn(self._compensate_then(FAILED, error))
        else:
            self._finish(FAILED, error=describe_error(error))

    async def _compensate_then(self, status: Status, error: BaseException | None) -> None:
        """Run the registered compensations, then end with ``status`` (failed/cancelled)."""
        self._compensating = True
        described = None if error is None else describe_error(error)
        try:
            await MachineContext(self).compensate()
        except Exception as comp_error:
            described = described or {"type": "CompensationFailed", "message": ""}
            described["compensation"] = str(comp_error)
        self._finish(status, error=described)

    def _finish(
        self, status: Status, result: Any = None, error: dict[str, str] | None = None
    ) -> None:
        entry: jr.Entry = {"k": "end", "t": self._now, "st": status}
        if error is not None:
            entry["err"] = error
        else:
            entry["ok"] = result
        self._record(entry, lambda rec: rec["st"] == status)
        self._close_tasks()
        self._set_final(status, result, error)
        self._commands.append(Finished(status, result, error))

    def _set_final(self, status: Status, result: Any, error: dict[str, str] | None) -> None:
        self.status, self.result, self.error = status, result, error
        self._pending.clear()

    def _update_status(self) -> None:
        for pending in self._pending.values():  # (a loop: runs after every input)
            if pending.op == "step" or pending.op == "call":  # work done on its behalf
                self.status = RUNNING
                return
        self.status = RUNNING if self._ready else WAITING

    def _task_done(self, task: _Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if self._current is task:
            self._current = None

    def _close_tasks(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.future._callbacks.clear()  # the main task's callback closes over both
            if task is not self._current:  # a running coroutine cannot be closed; it ends itself
                try:
                    task.coro.close()
                except (Exception, NonDeterminismError):
                    pass  # code that swallows GeneratorExit or acts in `finally`: nothing to keep
        self._tasks.clear()
        self._ready.clear()

    # -- journal ------------------------------------------------------------------------

    def _append(self, entry: jr.Entry) -> None:
        if self._keep_journal:
            self.journal.append(entry)
        self._new.append(entry)

    def _record(self, entry: jr.Entry, matches: Callable[[jr.Entry], bool]) -> bool:
        """Record an output entry; on replay, check it against the journal instead.

        Returns True if the entry is new (live), False if it was replayed.
        """
        if self._replay is not None and self._cursor < len(self._replay):
            recorded = self._replay[self._cursor]
            if recorded["k"] == entry["k"] and matches(recorded):
                self._cursor += 1
                return False
            self._diverge(
                f"the code requested {jr.describe(entry)!r} but the journal recorded "
                f"{jr.describe(recorded)!r} at position {self._cursor}"
            )
        self._append(entry)
        return True

    def _diverge(self, reason: str) -> NoReturn:
        if self.stuck_reason is None:
            self.stuck_reason = f"non-determinism: {reason}"
            self.status = STUCK
        raise NonDeterminismError(self.stuck_reason)

    # -- operations (called by the context) ---------------------------------------------

    def _operation(
        self, op: str, name: str, extra: dict[str, Any], convert: Callable[[Any], Any] = identity
    ) -> tuple[int, bool, Pending]:
        if self.final or self._closing:
            raise RuntimeError("the instance has finished or is being evicted; no operations")
        seq = self._next_seq
        self._next_seq += 1
        entry = {"k": "cmd", "s": seq, "op": op, "n": name}
        if extra:
            entry.update(extra)
        if self._replay is None:  # live: the common case, without _record's closure
            self._append(entry)
            live = True
        else:
            live = self._record(entry, lambda rec: rec["op"] == op and rec["n"] == name)
        pending = Pending(op, name, Future(), convert)
        return seq, live, pending

    def _error_for(self, pending: Pending, err: dict[str, str]) -> BaseException:
        if pending.op == "wait" and err["type"] == "WaitTimeout":
            event_type, key = pending.wait or (pending.name, None)
            return WaitTimeout(event_type, key)
        attempts = int(err.get("attempts", 1))
        if pending.op == "call":
            return TaskFailed(pending.name, err["type"], err["message"], attempts)
        return StepFailed(pending.name, err["type"], err["message"], attempts)
