"""Running steps and handlers outside the engine's critical section.

Async functions run *eagerly*: their coroutine is started on the spot, and if it finishes
without suspending (the common case for a trivial step) the result is available to the
same engine batch, saving a commit. A coroutine that does suspend continues as an asyncio
task. Sync functions run in a pool of daemon threads so they never block the engine's loop
(nor, if one hangs, the exit of a stopped engine).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NamedTuple

from .threads import DaemonThreadPool


class StepInfo(NamedTuple):
    """What a running step or handler can learn about itself (``overture.current_step()``).

    Immutable; a named tuple because one is made for every step attempt."""

    idempotency_key: str
    """Stable across retries and crash re-executions of this step."""
    attempt: int
    """1 for the first attempt."""
    instance_id: str | None
    """The process instance, or None for a handler."""
    name: str


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "overture_step", default=None
)


def current_step() -> StepInfo | None:
    """Inside a running step or handler: its :class:`StepInfo`; elsewhere ``None``."""
    return _current.get()


Done = Callable[[bool, Any], None]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Continue a coroutine that was started by hand, as the body of an asyncio task."""
    while True:
        try:
            sent = yield yielded
        except BaseException as error:
            try:
                yielded = coro.throw(error)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class Executor:
    """Starts calls and reports each outcome through ``done(ok, value_or_exception)``."""

    def __init__(self, threads: int = 16) -> None:
        self._pool = DaemonThreadPool(threads, "overture-step")
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closing = False

    def start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: StepInfo,
        timeout: float | None,
        done: Done,
    ) -> tuple[bool, Any] | None:
        """Start a call. An async call that ends without suspending (a trivial step)
        returns its outcome ``(ok, value_or_exception)`` at once and never calls ``done``;
        every other call returns None and reports through ``done`` later."""
        # Each call runs in its own copy of the context, so whatever it sets (the step
        # info, logging or tracing context) stays with it and never leaks into the engine.
        context = contextvars.copy_context()
        if not _is_async(fn):
            context.run(_current.set, info)
            self._start_sync(fn, args, kwargs, timeout, done, context)
            return None
        try:
            coro, yielded = context.run(_begin, info, fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a step's failure, whatever a library raised
            return False, _as_exception(error)
        if coro is None:
            return True, yielded  # finished without suspending: its return value

        async def rest() -> Any:
            return await _resume(coro, yielded)

        loop = asyncio.get_running_loop()
        self._track(loop.create_task(_with_timeout(rest(), timeout), context=context), done)
        return None

    def _start_sync(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        done: Done,
        context: contextvars.Context,
    ) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, lambda: context.run(fn, *args, **kwargs))
        self._track(asyncio.ensure_future(_with_timeout(future, timeout)), done)

    def _track(self, future: asyncio.Future[Any], done: Done) -> None:
        self._tasks.add(future)

        def finished(f: asyncio.Future[Any]) -> None:
            self._tasks.discard(f)
            if f.cancelled():
                if self._closing:
                    return  # engine shutdown: the work row stays; the step runs after restart
                # the step itself ended in CancelledError: a failed attempt like any other
                done(False, RuntimeError("the step was cancelled (it raised CancelledError)"))
                return
            error = f.exception()
            if error is None:
                done(True, f.result())
            else:
                done(False, _as_exception(error))

        future.add_done_callback(finished)

    @property
    def busy(self) -> int:
        """Calls still running."""
        return len(self._tasks)

    async def shutdown(self, grace: float) -> None:
        """Give running calls ``grace`` seconds, then cancel the rest (they run again
        after restart: at-least-once)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _begin(
    info: StepInfo, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Coroutine[Any, Any, Any] | None, Any]:
    """Set the step info, create the step's coroutine and run it to its first suspension:
    ``(coroutine, what it yielded)``, or ``(None, its return value)`` if it ended there.
    One call, so it runs in one ``Context.run``."""
    _current.set(info)
    coro = fn(*args, **kwargs)
    try:
        return coro, coro.send(None)
    except StopIteration as stop:  # caught here: cheaper than unwinding two more frames
        return None, stop.value


def _as_exception(error: BaseException) -> Exception:
    if isinstance(error, Exception):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")


_ASYNC: dict[Any, bool] = {}


def _is_async(fn: Callable[..., Any]) -> bool:
    """Coroutine functions, partials of them, and objects with an ``async __call__``
    (memoized: it is asked for every step)."""
    try:
        return _ASYNC[fn]
    except (KeyError, TypeError):
        pass
    result = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    try:
        if len(_ASYNC) < 10_000:
            _ASYNC[fn] = result
    except TypeError:  # unhashable callable
        pass
    return result


async def _with_timeout(awaitable: Any, limit: float | None) -> Any:
    if limit is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, limit)
    except TimeoutError:
        raise TimeoutError(f"timed out after {limit:g}s") from None
