"""``ctx``: the :class:`~overture.core.context.Context` process code gets, implemented on
its :class:`~overture.core.machine.Machine` (each operation journals a command there and
returns a future the machine's scheduler resolves)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import EventValidationError, OperationAbandoned, StepFailed
from ..events import Envelope, Event, number_problem
from ..policies import DEFAULT_RETRY, Retry
from ..protocol import queue_problem
from ..tracecontext import continue_trace, traceparent_problem
from .commands import (
    Abandon,
    EmitEvent,
    ScheduleStep,
    ScheduleTask,
    StartTimer,
    StartWait,
    StepCall,
    TaskCall,
)
from .context import Context, DurableFuture
from .futures import Compensation, Future
from .values import result_decoder, to_json

if TYPE_CHECKING:
    from .machine import Machine

_EMIT_NAMESPACE = uuid.UUID("6f0f5d1c-3c1a-4a8e-9d6a-0b7e1e6f2a10")


class MachineContext(Context):
    __slots__ = ("_m",)

    def __init__(self, machine: Machine) -> None:
        self._m = machine

    @property
    def instance_id(self) -> str:
        return self._m.instance_id

    @property
    def key(self) -> str | None:
        return self._m.key

    @property
    def is_replaying(self) -> bool:
        return self._m._replay is not None

    @property
    def idempotency_key(self) -> str:
        return f"{self._m.instance_id}:{self._m._next_seq}"

    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        name: str | None = None,
        inline: bool = False,
        **kwargs: Any,
    ) -> Future[Any]:
        m = self._m
        step_name = name or getattr(fn, "__qualname__", None) or repr(fn)
        seq, live, pending = m._operation("step", step_name, {}, result_decoder(fn))
        pending.call = StepCall(
            m.instance_id,
            seq,
            step_name,
            fn,
            args,
            kwargs,
            retry or DEFAULT_RETRY,
            None if timeout is None else timeout.total_seconds(),
            inline,
        )
        m._pending[seq] = pending
        if live:
            m._commands.append(ScheduleStep(pending.call))
        return pending.future

    def call(
        self,
        task: str,
        input: Any = None,
        *,
        timeout: timedelta | None = None,
        retry: Retry | None = None,
        queue: str | None = None,
    ) -> Future[Any]:
        m = self._m
        # every mistake fails here, in the code that made it, with nothing journaled
        if not isinstance(task, str) or not task:
            raise TypeError(f"ctx.call needs a task name (a non-empty str), not {task!r}")
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise ValueError(f"ctx.call({task!r}): timeout must be a positive timedelta")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"ctx.call({task!r}): retry must be an ov.Retry, not {retry!r}")
        problem = None if queue is None else queue_problem(queue)
        if problem is not None:
            raise ValueError(f"ctx.call({task!r}): {problem}")
        try:
            payload = to_json(input)
            problem = number_problem(payload, "input")
            if problem is None:
                orjson.dumps(payload)  # anything else JSON cannot hold
        except Exception as error:
            problem = str(error)
        if problem is not None:
            raise EventValidationError(f"ctx.call({task!r}): the input is not JSON: {problem}")
        seq, live, pending = m._operation("call", task, {})
        pending.task = TaskCall(
            m.instance_id,
            seq,
            task,
            payload,
            None if timeout is None else timeout.total_seconds(),
            retry,
            queue,
            # every attempt continues the trigger's trace with a span id of (instance,
            # seq), derived again on replay, as for an emitted event
            continue_trace(m._trace, f"{m.instance_id}:{seq}"),
            m._tenant,
        )
        m._pending[seq] = pending
        if live:
            m._commands.append(ScheduleTask(pending.task))
        return pending.future

    def wait_for(
        self, event: type[Event] | str, *, key: str | None = None, timeout: timedelta | None = None
    ) -> Future[Any]:
        m = self._m
        if isinstance(event, str):
            event_type, cls = event, Event
        else:
            if event.event_type is None:
                raise TypeError("wait_for needs an Event subclass declared with type=...")
            event_type, cls = event.event_type, event
        wait_key = m.key if key is None else str(key)
        due = None if timeout is None else m._now + timeout.total_seconds()
        extra: dict[str, Any] = {"key": wait_key}
        if due is not None:
            extra["due"] = due
        codec = m._codec
        seq, live, pending = m._operation(
            "wait", event_type, extra, lambda value: codec.from_journal(value, cls)
        )
        pending.wait = (event_type, wait_key)
        m._pending[seq] = pending
        if live:
            m._commands.append(StartWait(seq, event_type, wait_key, due))
        return pending.future

    def sleep(self, duration: timedelta) -> Future[None]:
        m = self._m
        due = m._now + duration.total_seconds()
        seq, live, pending = m._operation("sleep", "timer", {"due": due}, lambda _: None)
        m._pending[seq] = pending
        if live:
            m._commands.append(StartTimer(seq, due))
        return pending.future

    def emit(
        self, event: Event | str, data: dict[str, Any] | None = None, *, key: str | None = None
    ) -> str:
        m = self._m
        if isinstance(event, str):
            event = Event.of(event, data or {})
        elif data is not None:
            raise TypeError("emit(data=...) is only for emit('type', data=...)")
        base = event.envelope
        try:  # fail in the process code that emitted it, not later in the engine
            payload = to_json(base.data)
        except Exception as error:
            raise EventValidationError(
                f"emitted event {base.type!r}: data is not JSON-serializable: {error}"
            ) from error
        if base.traceparent is not None:
            problem = traceparent_problem(base.traceparent)
            if problem is not None:
                raise EventValidationError(f"emitted event {base.type!r}: {problem}")
        event_id = str(uuid.uuid5(_EMIT_NAMESPACE, f"{m.instance_id}:{m._next_seq}"))
        seq, live, _ = m._operation("emit", base.type, {"ev": event_id})
        if live:
            # explicit values win; else the trigger's tenant, and its trace continued by
            # a span id of (instance, seq): a replay derives the very same one
            trace = base.traceparent
            if trace is None:
                trace = continue_trace(m._trace, f"{m.instance_id}:{seq}")
            envelope = Envelope(
                type=base.type,
                data=payload,
                id=event_id,
                source=f"/{m.spec.app_name}/{m.spec.name}/{m.instance_id}",
                subject=base.subject,
                time=datetime.fromtimestamp(m._now, UTC),
                dataschema=base.dataschema,
                partitionkey=str(key) if key is not None else (base.partitionkey or m.key),
                traceparent=trace,
                tenant=m._tenant if base.tenant is None else base.tenant,
            )
            m._commands.append(EmitEvent(seq, envelope))
        return event_id

    def compensate_with(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._m._compensations.append(Compensation(fn, args, kwargs))

    async def compensate(self) -> None:
        m = self._m
        first_error: BaseException | None = None
        while m._compensations:
            # popped only once done: a cancel arriving meanwhile re-runs it (at least once)
            comp = m._compensations[-1]
            name = "compensate:" + (getattr(comp.fn, "__qualname__", None) or repr(comp.fn))
            try:
                await self.step(comp.fn, *comp.args, name=name, **comp.kwargs)
            except StepFailed as error:
                first_error = first_error or error
            if m._compensations and m._compensations[-1] is comp:
                m._compensations.pop()
        if first_error is not None:
            raise first_error

    def _futures(self, what: str, operations: tuple[Awaitable[Any], ...]) -> list[Future[Any]]:
        """The futures of operations, sub-coroutines spawned as tasks of the machine."""
        futures: list[Future[Any]] = []
        for op in operations:
            if isinstance(op, Future):
                futures.append(op)
            elif isinstance(op, Coroutine):
                futures.append(self._m._spawn(op).future)
            else:
                raise TypeError(f"ctx.{what} takes ctx operations or coroutines, not {op!r}")
        return futures

    def gather(self, *operations: Awaitable[Any]) -> Future[list[Any]]:
        futures = self._futures("gather", operations)
        result: Future[list[Any]] = Future()
        remaining = [len(futures)]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                for f in futures:
                    if f._error is not None:
                        result.set_error(f._error)
                        return
                result.set_result([f._result for f in futures])

        if not futures:
            result.set_result([])
        for f in futures:
            f.add_callback(one_done)
        return result

    def first(self, *operations: Awaitable[Any]) -> Future[int]:
        futures = self._futures("first", operations)
        if not futures:
            raise TypeError("ctx.first needs at least one operation")
        result: Future[int] = Future()
        for position, f in enumerate(futures):
            if f.done():  # finished before: the first in argument order wins
                result.set_result(position)
                return result

        def done(position: int) -> None:
            if not result.done():
                result.set_result(position)

        for position, f in enumerate(futures):
            f.add_callback(lambda p=position: done(p))  # type: ignore[misc]
        return result

    def abandon(self, *operations: DurableFuture[Any]) -> None:
        m = self._m
        for op in operations:
            if not isinstance(op, Future):
                raise TypeError(f"ctx.abandon takes ctx operations, not {op!r}")
            if op.done():
                continue
            target = next((s for s, p in m._pending.items() if p.future is op), None)
            if target is None:
                raise TypeError("ctx.abandon takes operations of this instance's ctx")
            seq, live, _ = m._operation("abandon", f"#{target}", {})
            pending = m._pending.pop(target)
            m._pending.pop(seq, None)
            if live:
                m._commands.append(Abandon(target))
            pending.future.set_error(OperationAbandoned(pending.op, pending.name))

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._m._now, UTC)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._m.rng.getrandbits(128), version=4)

    def random(self) -> float:
        return self._m.rng.random()
