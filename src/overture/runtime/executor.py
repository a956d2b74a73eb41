"""Running steps and handlers outside the engine's critical section.

Async functions run *eagerly*: their coroutine is started on the spot, and if it finishes
without suspending (the common case for a trivial step) the result is available to the
same engine batch, saving a commit. A coroutine that does suspend continues as an asyncio
task. Sync functions run in a pool of daemon threads so they never block the engine's loop
(nor, if one hangs, the exit of a stopped engine); their outcomes come back to the loop in
bursts, one wake-up for all that finished meanwhile; or the engine *folds* them: after it
has driven a batch it waits a moment (:meth:`Executor.wait_round`) for the sync calls that
batch started and applies their outcomes in the same batch, as for an async step that did
not suspend. A sync call that overruns its
``timeout`` is abandoned: its attempt fails with ``TimeoutError`` and the pool replaces its
thread. A sync step declared ``inline`` runs on the engine's thread, like an async step
that does not suspend. A watchdog thread logs any step that keeps the loop too long.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, NamedTuple

from ..errors import ConfigError
from .threads import DaemonThreadPool

# The loop's bookkeeping of its current task (what asyncio.current_task() answers),
# public in all but name: asyncio's own eager tasks (3.12) use these two.
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task

log = logging.getLogger("overture.engine")


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
    process: str | None = None
    """The name of the instance's process (None for a handler, and for a task function
    run by a worker: a task request names the instance, not its process)."""


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "overture_step", default=None
)


def current_step() -> StepInfo | None:
    """Inside a running step, handler or task function (run by a Python worker): its
    :class:`StepInfo`; elsewhere ``None``."""
    return _current.get()


PROCESS_FIELD = "process_name"
"""The ``extra=`` name of an instance's process on a log record; JSON log lines write it
as ``process``."""


def log_fields(info: StepInfo) -> dict[str, Any]:
    """``info`` as the ``extra=`` of an engine log line about the step, written from
    outside the step's own context (a watchdog, a timer): JSON log lines then name the
    instance, its process, the step and the attempt as a line from inside the step does."""
    fields: dict[str, Any] = {"step": info.name, "attempt": info.attempt}
    if info.instance_id is not None:
        fields["instance_id"] = info.instance_id
    if info.process is not None:
        # not "process": every LogRecord has that already (the OS process id)
        fields[PROCESS_FIELD] = info.process
    return fields


def set_current_step(info: StepInfo) -> None:
    """Make ``info`` what :func:`current_step` returns in the current context: the worker
    calls it in the asyncio task of one attempt (whose context is that task's own copy),
    before it runs the task function there or in a thread with a copy of it."""
    _current.set(info)


Done = Callable[[bool, Any], None]


@types.coroutine
def _resume(
    coro: Coroutine[Any, Any, Any], yielded: Any, watch: LoopWatch | None, info: StepInfo
) -> Generator[Any, Any, Any]:
    """Continue a coroutine that was started by hand, as the body of an asyncio task
    (each resumption marked for the loop watchdog)."""
    while True:
        try:
            sent = yield yielded
        except BaseException as error:
            if watch is not None:
                watch.enter(info)
            try:
                yielded = coro.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                if watch is not None:
                    watch.leave()
        else:
            if watch is not None:
                watch.enter(info)
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                if watch is not None:
                    watch.leave()


class _SyncCall:
    """One sync call in the pool: reported once, by whichever comes first of its own
    return (from its thread, through the executor's burst queue) and its time limit."""

    __slots__ = (
        "abandoned",
        "done",
        "info",
        "returned",
        "round",
        "settled",
        "started",
        "timer",
    )

    def __init__(self, done: Done, info: StepInfo, round_: int) -> None:
        self.done = done
        self.info = info
        self.round = round_  # the engine's fold round it was started in
        self.timer: asyncio.TimerHandle | None = None
        self.settled = False  # reported (on the loop)
        self.returned = False  # the function returned (under the executor's drain lock)
        self.abandoned = False  # given up on at its time limit (under the same lock)
        self.started = 0.0


class Executor:
    """Starts calls and reports each outcome through ``done(ok, value_or_exception)``.

    Args:
        threads: size of the pool sync calls run in; it bounds how many of them run at
            once (16 threads and 10 ms of blocking I/O per call: at most 1,600 calls/s).
        block_warning: seconds an async (or inline) call may keep the event loop before
            a warning names it; None: no watchdog.
    """

    def __init__(self, threads: int = 16, *, block_warning: float | None = 1.0) -> None:
        if threads < 1:
            raise ConfigError("the step thread pool needs at least one thread")
        self._pool = DaemonThreadPool(threads, "overture-step")
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sync: set[_SyncCall] = set()
        # Sync outcomes cross from the pool's threads in bursts: one call_soon_threadsafe
        # (one wake-up of the loop) for all the outcomes that arrive before the loop
        # drains them, instead of one per call.
        self._finished: deque[tuple[_SyncCall, bool, Any]] = deque()
        self._drain_lock = threading.Lock()
        self._drain_scheduled = False
        # Folding (see wait_round): the sync calls started in the current round, how many
        # of them have returned (under the drain lock), and whether the loop's thread is
        # waiting for them (then nothing schedules a drain: the waiter drains itself).
        self._round = 0
        self._round_started = 0
        self._round_returned = 0
        self._folding = False
        self._round_done = threading.Condition(self._drain_lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._sync_idle: asyncio.Event | None = None  # while shutting down
        self.watch = LoopWatch(block_warning) if block_warning is not None else None

    @property
    def threads(self) -> int:
        """The size of the sync pool."""
        return self._pool.max_workers

    def start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: StepInfo,
        timeout: float | None,
        done: Done,
        *,
        inline: bool = False,
        enter: Callable[[], None] | None = None,
    ) -> tuple[bool, Any] | None:
        """Start a call. An async call that ends without suspending (a trivial step), or
        an ``inline`` sync call, returns its outcome ``(ok, value_or_exception)`` at once
        and never calls ``done``; every other call returns None and reports through
        ``done`` later. ``enter`` is run first in the call's context (the tracing
        observer makes the attempt's span current there)."""
        # Each call runs in its own copy of the context, so whatever it sets (the step
        # info, logging or tracing context) stays with it and never leaks into the engine.
        context = contextvars.copy_context()
        if enter is not None:
            context.run(enter)
        watch = self.watch
        if watch is not None and watch.thread is None:
            watch.start()
        if not _is_async(fn):
            if inline:
                return self._run_inline(fn, args, kwargs, info, context)
            context.run(_current.set, info)
            self._start_sync(fn, args, kwargs, info, timeout, done, context)
            return None
        loop = asyncio.get_running_loop()
        if _suspends(fn) is False:
            return self._start_eager(fn, args, kwargs, info, timeout, done, context, loop)
        # The task that continues the coroutine if it suspends exists before its first
        # step and is the current task during it: code that remembers its task there
        # (anyio's cancel scopes, so httpx; asyncio.timeout) finds the same one when it
        # resumes. (Python 3.12's eager tasks do the same; 3.11 has none.) It costs a
        # task per call, so a function seen to return without suspending is started
        # without one from then on (``_start_eager``).
        started: list[Any] = []

        async def rest() -> Any:  # (what it awaits is made only once it runs)
            coro, yielded = started
            return await _with_timeout(_resume(coro, yielded, watch, info), timeout)

        task = loop.create_task(rest(), context=context)
        engine = asyncio.current_task(loop)
        if watch is not None:
            watch.enter(info)
        if engine is not None:
            _leave_task(loop, engine)
        _enter_task(loop, task)
        try:
            coro, yielded = context.run(_begin, info, fn, args, kwargs)
        except KeyboardInterrupt:
            task.cancel()
            raise
        except BaseException as error:  # a step's failure, whatever a library raised
            task.cancel()
            return False, _as_exception(error)
        finally:
            _leave_task(loop, task)
            if engine is not None:
                _enter_task(loop, engine)
            if watch is not None:
                watch.leave()
        _remember(fn, suspended=coro is not None)
        if coro is None:
            task.cancel()  # not started: it never runs a line
            return True, yielded  # finished without suspending: its return value
        started[:] = (coro, yielded)
        self._track(task, done)
        return None

    def _start_eager(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: StepInfo,
        timeout: float | None,
        done: Done,
        context: contextvars.Context,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[bool, Any] | None:
        """Start a function that returned without suspending before, on the engine's
        task. Should it suspend after all, it goes on in a task of its own (and gets one
        from the start from then on): a task-bound construct it entered before that first
        suspension fails this attempt, which is retried."""
        watch = self.watch
        if watch is not None:
            watch.enter(info)
        try:
            coro, yielded = context.run(_begin, info, fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a step's failure, whatever a library raised
            return False, _as_exception(error)
        finally:
            if watch is not None:
                watch.leave()
        if coro is None:
            return True, yielded
        _remember(fn, suspended=True)

        async def rest() -> Any:
            return await _with_timeout(_resume(coro, yielded, watch, info), timeout)

        self._track(loop.create_task(rest(), context=context), done)
        return None

    def _run_inline(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: StepInfo,
        context: contextvars.Context,
    ) -> tuple[bool, Any]:
        """A sync call its author declared non-blocking: run it here, on the engine's
        thread (no hand-off, no wake-up; a time limit cannot apply)."""
        watch = self.watch
        if watch is not None:
            watch.enter(info)
        try:
            return True, context.run(_call_with_info, info, fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            return False, _as_exception(error)
        finally:
            if watch is not None:
                watch.leave()

    def _start_sync(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        info: StepInfo,
        timeout: float | None,
        done: Done,
        context: contextvars.Context,
    ) -> None:
        loop = self._loop = asyncio.get_running_loop()
        call = _SyncCall(done, info, self._round)
        self._round_started += 1
        finished = self._finished

        def run() -> bool:  # in a pool thread; True: abandoned, so this thread leaves
            # Its time limit counts from here (read by _expire under the same lock), so a
            # call is never abandoned while it waits for a thread and cannot be abandoned
            # before it runs.
            with self._drain_lock:
                call.started = time.monotonic()
            try:
                outcome = (call, True, context.run(fn, *args, **kwargs))
            except BaseException as error:  # reported as the attempt's failure
                outcome = (call, False, error)
            with self._drain_lock:
                call.returned = True
                abandoned = call.abandoned
                if not abandoned:
                    finished.append(outcome)
                    if call.round == self._round:
                        self._round_returned += 1
                    if self._folding:  # the loop's thread is waiting and drains itself
                        if self._round_returned >= self._round_started:
                            self._round_done.notify()
                        return False
                    if self._drain_scheduled:
                        return False
                    self._drain_scheduled = True
            if abandoned:  # given up on at its time limit: its thread was replaced
                log.warning(
                    "step %r (instance %s, attempt %d) returned %.1fs after it was "
                    "abandoned at its timeout; its outcome is ignored",
                    info.name,
                    info.instance_id,
                    info.attempt,
                    time.monotonic() - call.started,
                    extra=log_fields(info),
                )
                return True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the engine is gone
                pass
            return False

        self._sync.add(call)
        if timeout is not None:
            call.timer = loop.call_later(timeout, self._expire, call, timeout)
        self._pool.run(run)

    def begin_round(self) -> None:
        """On the loop: start counting sync calls anew (a fold round: see wait_round)."""
        with self._drain_lock:
            self._round += 1
            self._round_started = 0
            self._round_returned = 0

    @property
    def round_started(self) -> int:
        """Sync calls started since :meth:`begin_round`."""
        return self._round_started

    def wait_round(self, limit: float) -> bool:
        """On the loop's thread: block (the GIL released) until every sync call started
        since :meth:`begin_round` has returned, or for at most ``limit`` seconds; then
        report every sync outcome that has arrived, through the calls' ``done``.

        Returns True if all of the round's calls returned in time. This is how quick sync
        steps fold into the batch that started them instead of costing a batch each; a
        slow one simply reports later, through the usual drain."""
        deadline = time.monotonic() + limit
        with self._drain_lock:
            self._folding = True
            try:
                while self._round_returned < self._round_started:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._round_done.wait(remaining)
                complete = self._round_returned >= self._round_started
            finally:
                self._folding = False
        # Whatever returned while folding was not given a drain: report it now. A drain
        # scheduled before the fold still runs later (and finds what arrived since).
        self._report()
        return complete

    def _drain(self) -> None:
        """On the loop: report every sync outcome that arrived since the last drain."""
        with self._drain_lock:
            self._drain_scheduled = False
        self._report()

    def _report(self) -> None:
        finished = self._finished
        while finished:
            call, ok, value = finished.popleft()
            if call.settled:
                continue
            self._settle(call)
            call.done(ok, value if ok else _as_exception(value))

    def _settle(self, call: _SyncCall) -> None:
        call.settled = True
        self._sync.discard(call)
        if call.timer is not None:
            call.timer.cancel()
        if not self._sync and self._sync_idle is not None:
            self._sync_idle.set()

    def _expire(self, call: _SyncCall, limit: float) -> None:
        """A sync call may have overrun its time limit: fail the attempt and lend the
        pool a thread in place of the one the call keeps (a thread cannot be stopped).

        The timer is set when the call is queued, and the limit counts from when a
        thread starts it, which only its thread knows: a call that waited in the queue
        gets its timer set again for what is left (rather than one cross-thread
        ``call_soon_threadsafe`` per call to arm the timer as it starts)."""
        with self._drain_lock:
            if call.settled or call.returned:
                return  # returned just in time: its outcome is on its way to _drain
            left = limit if not call.started else call.started + limit - time.monotonic()
            if left > 0:
                assert self._loop is not None
                call.timer = self._loop.call_later(left, self._expire, call, limit)
                return
            call.abandoned = True
        self._settle(call)
        self._pool.abandon()
        info = call.info
        log.warning(
            "step %r (instance %s, attempt %d) overran its timeout of %gs: the attempt "
            "fails and its thread is abandoned (the pool starts a replacement)",
            info.name,
            info.instance_id,
            info.attempt,
            limit,
            extra=log_fields(info),
        )
        call.done(False, TimeoutError(f"timed out after {limit:g}s"))

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
        return len(self._tasks) + len(self._sync)

    async def shutdown(self, grace: float) -> None:
        """Give running calls ``grace`` seconds, then cancel the rest (they run again
        after restart: at-least-once)."""
        deadline = time.monotonic() + grace
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        if self._sync:  # their outcomes arrive through _drain, which sets the event
            self._sync_idle = asyncio.Event()
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._sync_idle.wait(), remaining)
            except TimeoutError:
                pass
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        self._pool.shutdown(cancel=True)
        self._drain()
        for call in list(self._sync):  # not reported: their work rows stay stored
            self._settle(call)
        if self.watch is not None:
            self.watch.stop()


class LoopWatch:
    """Notices a step that keeps the event loop (an async step that blocks, or an
    ``inline`` one that should not have been).

    The loop marks entering and leaving step code (two attribute writes and an
    increment, cheap enough for every step); a daemon thread samples the mark a few
    times per ``threshold`` and logs a warning naming the step once the same entry has
    lasted ``threshold`` seconds. It cannot interrupt the step; it makes the stall
    visible.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.current: StepInfo | None = None
        self.entries = 0
        self.thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def enter(self, info: StepInfo) -> None:
        self.entries += 1
        self.current = info

    def leave(self) -> None:
        self.current = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._watch, name="overture-loop-watch", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        seen: tuple[int, StepInfo] | None = None
        since = 0.0
        warned: tuple[int, StepInfo] | None = None
        while not self._stopped.wait(self.threshold / 4):
            info = self.current
            now = time.monotonic()
            if info is None:
                seen = None
                continue
            mark = (self.entries, info)
            if mark != seen:
                seen, since = mark, now
                continue
            if mark != warned and now - since >= self.threshold:
                warned = mark
                log.warning(
                    "step %r (instance %s, attempt %d) has blocked the engine's event loop "
                    "for %.1fs: nothing else runs meanwhile (use a sync step, which runs "
                    "in a thread, or await non-blocking calls)",
                    info.name,
                    info.instance_id,
                    info.attempt,
                    now - since,
                    extra=log_fields(info),
                )


def _call_with_info(
    info: StepInfo, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    _current.set(info)
    return fn(*args, **kwargs)


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
_SUSPENDS: dict[Any, bool] = {}


def _code(fn: Callable[..., Any]) -> Any:
    """What decides whether calls suspend: the code (a lambda made per call, a bound
    method made per access share theirs), else the callable itself."""
    return getattr(getattr(fn, "__func__", fn), "__code__", fn)


def _suspends(fn: Callable[..., Any]) -> bool | None:
    """Whether calls of ``fn`` suspended (True once one did), None if unknown."""
    try:
        return _SUSPENDS.get(_code(fn))
    except TypeError:  # unhashable callable: always started in a task
        return None


def _remember(fn: Callable[..., Any], *, suspended: bool) -> None:
    try:
        key = _code(fn)
        if suspended:
            _SUSPENDS[key] = True
        elif key not in _SUSPENDS and len(_SUSPENDS) < 10_000:
            _SUSPENDS[key] = False
    except TypeError:
        pass


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
    # asyncio.timeout, not wait_for: the step goes on in this very task (wait_for runs it
    # in a task of its own on 3.11, which code that remembers its task would notice)
    try:
        async with asyncio.timeout(limit):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(f"timed out after {limit:g}s") from None
