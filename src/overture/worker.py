"""The Python worker: runs an app's task functions on the attempts engines publish.

A :class:`Worker` claims attempts from the backend's task queue (``Backend.tasks``, the
``TaskQueue`` port) for as many slots as it has free, runs each one, and finishes it
with the result record ``overture.tasks`` builds from the request, so its results are
byte for byte those of every other kind of worker. ``overture worker`` runs one in its
own process; ``overture run`` runs one next to the engine.

How an attempt runs:

- its request is parsed; one past its deadline is skipped (the engine has given it up,
  so a result would be dropped) and nothing is finished;
- :meth:`Worker.runner_for` chooses how to run the attempt's task: the app's function
  (``def`` in a pool of ``concurrency`` daemon threads, ``async def`` on the loop), or a
  non-retryable failure naming the task and the worker when the app has no function for
  it. (A push task's dispatcher plugs in there.)
- the lease is renewed every ``lease / 3`` seconds while it runs; a lost lease (it ran
  out and another worker claimed the attempt) is logged and the result still sent: the
  engine keeps the first result of an attempt;
- inside the function ``overture.current_step()`` gives the call's idempotency key (the
  same for every attempt), the attempt, the instance and the task's name, as in a step;
- output becomes ``overture.task.completed``; an exception ``overture.task.failed``,
  retryable unless it is a :class:`~overture.TerminalError` (output that is not JSON is a
  non-retryable ``TypeError``; a result the log refuses, larger than Kafka accepts, a
  non-retryable ``ResultRefused``: sent again, it would only be refused again).

Slots are independent: a slow attempt holds its own slot only. :meth:`Worker.stop` stops
claiming and gives running attempts ``grace`` seconds; the ones still running then are
abandoned (their leases run out and another worker runs them again: at least once).

Port calls (claim, heartbeat, finish) block (SQLite waits for the write lock and the
fsync), so they run in daemon threads of their own (``worker_threads.py``), never on the
event loop that runs the async tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .app import App
from .codec import Codec
from .errors import ConfigError, EventError, EventValidationError, OvertureError, TerminalError
from .events import Envelope
from .observe import tracehooks
from .ports import Backend, ClaimedTask, FinishOutcome, NewRecord
from .protocol import TaskRequest
from .push import PushExecutor, PushOptions
from .runtime.executor import StepInfo, set_current_step
from .runtime.threads import DaemonThreadPool
from .tasks import TaskDef, completed, failed, invalid_request, parse_request
from .worker_threads import Coalescer, PortThreads, on_pool

__all__ = ["Attempt", "Runner", "Worker", "WorkerStats"]

log = logging.getLogger("overture.worker")

T = TypeVar("T")

UNKNOWN_TASK = "UnknownTask"
"""The error type of the failure a worker reports for a task it has no function for."""
RESULT_REFUSED = "ResultRefused"
"""The error type of the failure a worker reports when the log refuses an attempt's
result itself (on Kafka: larger than the cluster accepts), a non-retryable one."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed task attempt, as a :data:`Runner` gets it.

    Attributes:
        claimed: the queue entry and its lease.
        envelope: the ``overture.task.requested`` CloudEvent.
        request: its data: task, input, attempt number, idempotency key, deadline, reply.
        definition: the app's definition of the task (None: the app does not define it).
    """

    claimed: ClaimedTask
    envelope: Envelope
    request: TaskRequest
    definition: TaskDef | None


Runner = Callable[[Attempt], Awaitable[NewRecord | None]]
"""Runs one attempt and returns its result record (``overture.tasks.completed`` or
``failed``), or None to finish nothing (the attempt is then left to its lease)."""


@dataclass(slots=True)
class WorkerStats:
    """What a worker has done since it started (counts of attempts)."""

    claimed: int = 0
    skipped: int = 0
    """Past their deadline, or a runner that returned no result: nothing was finished
    (the attempt is left to its lease)."""
    invalid: int = 0
    """Requests that could not be parsed: each answered with a non-retryable failure
    (``tasks.INVALID_REQUEST``), so it ends instead of coming back at every lease expiry."""
    accepted: int = 0
    """Results the queue accepted."""
    ended: int = 0
    """Results refused because the attempt was over (a duplicate, or the engine gave
    the attempt up)."""
    unknown: int = 0
    failed_finishes: int = 0
    """Results the queue could not take (storage or broker failure): the attempt is left
    to its lease and runs again elsewhere."""
    lost_leases: int = 0
    failed_heartbeats: int = 0
    """Lease renewals that raised (the port failed): logged, and retried a third of a
    lease later; three in a row are logged as an error (the lease has run out)."""
    abandoned: int = 0
    """Still running when the grace period of a stop ran out."""


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def queues_of(app: App) -> list[str]:
    """The queues of the app's tasks a worker can run, those with a function and push
    tasks (what a worker serves by default), in order of definition."""
    return list(dict.fromkeys(t.queue for t in app.tasks if runnable(t)))


def runnable(definition: TaskDef) -> bool:
    """Whether a Python worker runs this task: its function, or a push to its URL."""
    return definition.fn is not None or definition.url is not None


class Worker:
    """Runs the task functions of ``app`` on the attempts published to ``backend``.

    Use ``await worker.run()`` until :meth:`stop`, or ``async with worker:`` to run it in
    the background for the block's duration (it stops, draining, when the block ends).

    Args:
        app: the tasks' definitions and functions.
        backend: the backend whose task queue (``backend.tasks``) it claims from and
            finishes into.
        queues: the queues to serve; default: those of the app's tasks with a function.
        concurrency: attempts run at once (also the number of threads for sync tasks).
        claim_batch: most attempts one claim takes (default: half of ``concurrency``).
            A loaded worker that took every published attempt in one claim would run
            them and finish them as one wave, while the engine waits, then wait itself
            while the engine applies the whole wave: in two or more groups, the engine
            applies one group's results (and publishes the next steps) while the worker
            runs the next group. (W5: 1.16x the throughput with half; docs/benchmarks.md.)
        lease: seconds an attempt is held per claim or heartbeat; a worker that dies
            stops renewing it, and the attempt is handed to another worker after this.
        worker_id: this worker's id in the queue (default: host, pid and a random part).
        grace: seconds running attempts get to finish once :meth:`stop` is called.
        poll: seconds between claims while nothing wakes it (attempts whose lease ran
            out are found this way; new attempts wake it at once).
        codec: reads requests and writes results (default: ``Codec(app)``).

    Raises:
        ConfigError: no queue to serve, or an option out of range.
    """

    def __init__(
        self,
        app: App,
        backend: Backend,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 8,
        claim_batch: int | None = None,
        lease: float = 30.0,
        worker_id: str | None = None,
        grace: float = 5.0,
        poll: float = 1.0,
        codec: Codec | None = None,
    ) -> None:
        if isinstance(queues, str):
            raise ConfigError(f"queues must be a list of names, not the string {queues!r}")
        served = queues_of(app) if queues is None else list(dict.fromkeys(queues))
        if not served:
            raise ConfigError(
                f"app {app.name!r} defines no task with a function or a URL, so a worker has "
                "no queue to serve: define one with @app.task, or name the queues"
            )
        if not all(isinstance(q, str) and q for q in served):
            raise ConfigError(f"queue names must be non-empty strings, not {served!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, not {concurrency!r}")
        if claim_batch is None:
            claim_batch = max(1, concurrency // 2)
        elif (
            isinstance(claim_batch, bool)
            or not isinstance(claim_batch, int)
            or not 1 <= claim_batch <= concurrency
        ):
            raise ConfigError(
                f"claim_batch must be an integer from 1 to concurrency ({concurrency}), "
                f"not {claim_batch!r}"
            )
        for name, value in (("lease", lease), ("poll", poll)):
            if not _finite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not _finite(grace) or grace < 0:
            raise ConfigError(f"grace must be a number of seconds >= 0, not {grace!r}")
        if worker_id is not None and (not isinstance(worker_id, str) or not worker_id):
            raise ConfigError(f"worker_id must be a non-empty string, not {worker_id!r}")
        if getattr(backend, "tasks", None) is None:
            raise ConfigError(f"the backend {backend.url} has no task queue for workers")
        self.app = app
        self.backend = backend
        self.queues = served
        self.concurrency = concurrency
        self.claim_batch = claim_batch
        self.lease = float(lease)
        self.worker_id = worker_id or default_worker_id()
        self.grace = float(grace)
        self.poll = float(poll)
        self.codec = codec if codec is not None else Codec(app)
        pushed = [t for t in app.tasks if t.url is not None and t.queue in served]
        # made now: a push task whose signing secret is missing fails the start, not
        # its first attempt; a connection for each attempt the worker may run at once
        # (more would stay idle, fewer would make attempts queue for one)
        self._push = (
            PushExecutor(pushed, self.codec, options=PushOptions(max_connections=concurrency))
            if pushed
            else None
        )
        self.stats = WorkerStats()
        self._claim_at = max(1, concurrency // 4)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._started = False
        self._wake: asyncio.Event | None = None  # attempts may have been published
        self._slot: asyncio.Event | None = None  # a running attempt ended
        self._changed: asyncio.Event | None = None  # stats changed (wait_finished)
        self._background: asyncio.Task[None] | None = None
        self._threads: DaemonThreadPool | None = None
        self._io: PortThreads | None = None
        self._finishes: Coalescer[tuple[str, NewRecord], FinishOutcome] | None = None
        self._shut = False  # the pools were shut down

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run attempts until :meth:`stop`, then drain (see ``grace``).

        Raises:
            ConfigError: the worker was started before.
        """
        if self._started:
            raise ConfigError("a worker runs once: create a new Worker to run again")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._wake, self._slot, self._changed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._threads = DaemonThreadPool(self.concurrency, "overture-task")
        self._io = PortThreads(self.concurrency + 2, "overture-worker-io")
        self._finishes = Coalescer(self._io, self._finish_many)
        queue = self.backend.tasks
        wake = self._wake

        def woken() -> None:  # from the queue's watcher thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are done
                loop.call_soon_threadsafe(wake.set)

        unsubscribe = queue.subscribe(woken)
        log.info(
            "worker %s serving %s (concurrency %d, lease %gs)",
            self.worker_id,
            ", ".join(self.queues),
            self.concurrency,
            self.lease,
        )
        try:
            try:
                await self._claim_loop()
            except BaseException:  # cancelled, or a bug: no drain, the leases run out
                self._abandon()
                raise
            finally:
                unsubscribe()
            await self._drain()
        finally:
            # on every way out (a cancelled run too): idle threads would wait for work
            # forever, and the push client would keep its connections
            self._shut_pools()
            if self._push is not None:
                await self._push.close()

    def stop(self) -> None:
        """Stop claiming; running attempts get ``grace`` seconds to finish. Safe to call
        from any thread, and before :meth:`run` (it then returns at once)."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: it has stopped
            loop.call_soon_threadsafe(self._stop_now)

    def _stop_now(self) -> None:
        self._stopping = True
        for event in (self._wake, self._slot):
            if event is not None:
                event.set()

    async def __aenter__(self) -> Worker:
        self._background = asyncio.create_task(self.run(), name=f"overture-worker {self.worker_id}")
        await asyncio.sleep(0)  # let it subscribe and claim before the block goes on
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._background is not None:
            await self._background

    async def until(self, predicate: Callable[[WorkerStats], bool]) -> None:
        """Wait until ``predicate(worker.stats)`` holds (checked whenever the counts
        change): a helper for tests and scripts; bound it with ``asyncio.timeout``."""
        while not predicate(self.stats):
            if self._changed is None:  # not running yet
                await asyncio.sleep(0.01)
                continue
            self._changed.clear()
            await self._changed.wait()

    async def wait_finished(self, count: int) -> None:
        """Wait until ``count`` attempts in all have been finished or skipped (any
        outcome); see :meth:`until`."""
        await self.until(
            lambda s: s.accepted + s.ended + s.unknown + s.skipped + s.failed_finishes >= count
        )

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self._wake is not None and self._slot is not None
        queue = self.backend.tasks
        filling = False  # the last claim got all it asked for: more may be waiting
        while not self._stopping:
            free = self.concurrency - len(self._running)
            if free <= 0 or (self._running and free < self._claim_at and not filling):
                # Busy: wait until a quarter of the slots are free, so that a loaded
                # worker claims in groups (one claim is one write transaction) rather
                # than once per finished attempt. (A worker still filling its slots
                # from a backlog claims the last few too.)
                filling = False  # once a slot ends, refills wait for a quarter again
                self._slot.clear()
                await self._slot.wait()
                continue
            self._wake.clear()
            wanted = min(free, self.claim_batch)
            try:
                claimed = await self._call(
                    queue.claim, self.queues, self.worker_id, wanted, self.lease
                )
            except Exception as error:  # the file is locked, the broker is down, a bug...
                log.error(
                    "claiming task attempts failed: %s; retrying in %gs",
                    error,
                    self.poll,
                    exc_info=not isinstance(error, OvertureError),  # a bug: its traceback
                )
                claimed = []
            for task in claimed:
                if self._stopping:
                    break  # not started: its lease runs out, another worker takes it
                if task.id in self._running:
                    # Its lease lapsed while it ran here (a late heartbeat) and this
                    # claim took it back, renewing the lease: it is still running.
                    continue
                self._start(task)
            # fewer than asked for: nothing more is claimable now (a full claim goes on
            # at once, for the slots still free)
            filling = len(claimed) == wanted
            if len(claimed) < wanted and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)

    def _start(self, task: ClaimedTask) -> None:
        self._count("claimed")
        running = asyncio.create_task(self._attempt(task), name=f"overture-task {task.id}")
        self._running[task.id] = running

        def ended(_: asyncio.Task[None]) -> None:
            self._running.pop(task.id, None)
            if self._slot is not None:
                self._slot.set()

        running.add_done_callback(ended)

    async def _drain(self) -> None:
        running = list(self._running.values())
        if running:
            log.info("stopping: %d attempt(s) running get %gs", len(running), self.grace)
            _, pending = await asyncio.wait(running, timeout=self.grace)
            if pending:
                log.warning(
                    "%d attempt(s) still running after %gs: abandoned to their leases "
                    "(another worker runs them again)",
                    len(pending),
                    self.grace,
                )
                self._abandon()
                await asyncio.gather(*pending, return_exceptions=True)
        self._shut_pools()
        s = self.stats
        log.info(
            "worker %s stopped: %d attempt(s) claimed, %d result(s) accepted, %d refused "
            "(the attempt was over), %d skipped, %d abandoned",
            self.worker_id,
            s.claimed,
            s.accepted,
            s.ended + s.unknown,
            s.skipped,
            s.abandoned,
        )

    def _shut_pools(self) -> None:
        """Let the threads end once their calls return (a second call does nothing)."""
        if self._shut:
            return
        self._shut = True
        for pool in (self._threads, self._io):
            if pool is not None:
                pool.shutdown()

    def _abandon(self) -> None:
        for running in list(self._running.values()):
            if not running.done():
                self.stats.abandoned += 1
                running.cancel()

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self, task: ClaimedTask) -> None:
        try:
            envelope, request = parse_request(self.codec, task.request)
        except OvertureError as error:
            # Left to its lease, it would come back at every expiry, forever: it is
            # answered with a non-retryable failure built from what can be read (the
            # engine fails the call, or dead-letters the result it cannot place).
            log.error(
                "task attempt %s is not a valid request, answered with a non-retryable failure: %s",
                task.id,
                error,
            )
            self._count("invalid")
            answer = invalid_request(
                self.codec, task.id, task.request, str(error), source=f"/{self.app.name}"
            )
            await self._finish(task, answer, None)
            return
        if request.deadline is not None and request.deadline <= time.time():
            log.info("skipped task attempt %s (%s): past its deadline", task.id, request.task)
            self._count("skipped")
            return
        runner = self.runner_for(self.app.task_def(request.task))
        beat = asyncio.create_task(self._heartbeat(task.id), name=f"overture-heartbeat {task.id}")
        # with tracing, the attempt runs in its CONSUMER span (this coroutine is the
        # attempt's own task: the span is current for it alone), and the request it
        # answers carries that span's traceparent, so the result continues the trace
        with tracehooks.task_span(envelope, request.queue, request.task, request.attempt) as (
            envelope,
            _,
        ):
            attempt = Attempt(task, envelope, request, self.app.task_def(request.task))
            try:
                result = await runner(attempt)
            except Exception:  # a runner's bug: no result, the attempt is left to its lease
                log.exception("running task attempt %s (%s) failed", task.id, request.task)
                result = None
            finally:
                beat.cancel()
        if result is None:
            self._count("skipped")
            return
        await self._finish(task, result, (envelope, request))

    async def _finish(
        self,
        task: ClaimedTask,
        result: NewRecord,
        parsed: tuple[Envelope, TaskRequest] | None,
    ) -> None:
        """Hand ``result`` to the queue and count the outcome (``parsed``: the request,
        to answer with a failure if the log refuses the result itself). The finishes of
        attempts ending in the same loop turn are one ``finish_many`` call."""
        assert self._finishes is not None
        try:
            try:
                outcome: FinishOutcome = await self._finishes.call((task.id, result))
            except EventError as error:
                if parsed is None:
                    raise
                # the log refuses this result itself (larger than Kafka takes): sent again
                # it would be refused again, so the attempt fails, saying why
                log.error("the result of task attempt %s was refused: %s", task.id, error)
                refused = failed(
                    self.codec,
                    parsed[0],
                    parsed[1],
                    RESULT_REFUSED,
                    f"worker {self.worker_id}: {error}",
                    retryable=False,
                )
                outcome = await self._finishes.call((task.id, refused))
        except Exception as error:  # one result lost must not stop the worker
            log.error(
                "finishing task attempt %s failed, left to its lease: %s",
                task.id,
                error,
                exc_info=not isinstance(error, OvertureError),  # a bug: its traceback
            )
            self._count("failed_finishes")
            return
        if outcome != "accepted":
            log.info("the result of task attempt %s was not taken: %s", task.id, outcome)
        self._count(outcome)

    def runner_for(self, definition: TaskDef | None) -> Runner:
        """How this worker runs an attempt of ``definition``: the one place that choice is
        made. The app's function if it has one; a push task (``url=``) is POSTed to its
        URL (``overture.push``); else a non-retryable failure naming the task and this
        worker."""
        if definition is not None and definition.fn is not None:
            return self._run_function
        if definition is not None and definition.url is not None and self._push is not None:
            return self._run_push
        return self._refuse

    async def _run_push(self, attempt: Attempt) -> NewRecord:
        assert self._push is not None
        return await self._push.push(attempt.envelope, attempt.request, attempt.claimed.request)

    async def _refuse(self, attempt: Attempt) -> NewRecord:
        name = attempt.request.task
        if attempt.definition is not None and attempt.definition.url is not None:
            why = f"task {name!r} is a push task (url=), which this worker does not run"
        else:
            why = f"app {self.app.name!r} has no function for task {name!r}"
        return failed(
            self.codec,
            attempt.envelope,
            attempt.request,
            UNKNOWN_TASK,
            f"worker {self.worker_id} (queues {', '.join(self.queues)}): {why}",
            retryable=False,
        )

    async def _run_function(self, attempt: Attempt) -> NewRecord:
        assert attempt.definition is not None and attempt.definition.fn is not None
        fn = attempt.definition.fn
        codec, envelope, request = self.codec, attempt.envelope, attempt.request
        # the function can key its side effects by the call's idempotency key, as a step
        # does (``ov.current_step()``); this coroutine is the attempt's own asyncio task,
        # so the value stays with it
        set_current_step(
            StepInfo(request.idempotency_key, request.attempt, request.instance_id, request.task)
        )
        try:
            if inspect.iscoroutinefunction(fn):
                output = await fn(request.input)
            else:
                output = await self._in_thread(fn, request.input)
                if inspect.isawaitable(output):  # a def returning a coroutine
                    output = await output
        except TerminalError as error:
            tracehooks.record_error(error)
            return failed(codec, envelope, request, _name(error), str(error), retryable=False)
        except Exception as error:
            tracehooks.record_error(error)
            return failed(codec, envelope, request, _name(error), str(error), retryable=True)
        try:
            return completed(codec, envelope, request, output)
        except EventValidationError as error:
            return failed(
                codec,
                envelope,
                request,
                "TypeError",
                f"task {request.task!r} returned output that is not JSON: {error}",
                retryable=False,
            )

    async def _heartbeat(self, task_id: str) -> None:
        queue = self.backend.tasks
        failures = 0  # in a row
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                kept = await self._call(queue.heartbeat, task_id, self.worker_id, self.lease)
            except Exception as error:
                # Any failure of the port (a locked file, a broker away, a bug below it)
                # must not end the renewals: the attempt runs on, and a lease lapsed
                # meanwhile is taken back by the next heartbeat that gets through (as
                # long as no other worker claimed the attempt in between).
                failures += 1
                self._count("failed_heartbeats")
                lapsed = failures >= 3  # three renewals missed: a lease's worth
                log.log(
                    logging.ERROR if lapsed else logging.WARNING,
                    "renewing the lease of task attempt %s failed (%d time(s) in a row%s): %s",
                    task_id,
                    failures,
                    "; its lease has run out: another worker may run it again" if lapsed else "",
                    error,
                    exc_info=not isinstance(error, OvertureError),  # a bug: its traceback
                )
                continue
            failures = 0
            if not kept:
                log.warning(
                    "lost the lease of task attempt %s (it ran out and another worker took "
                    "the attempt, or the attempt ended); its result is still sent",
                    task_id,
                )
                self.stats.lost_leases += 1
                return

    def _count(self, outcome: str) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self._changed is not None:
            self._changed.set()

    # -- threads --------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[Any], T], arg: Any) -> T:
        assert self._threads is not None
        context = contextvars.copy_context()  # current_step() in the thread too
        return await on_pool(self._threads, lambda: context.run(fn, arg))

    def _finish_many(
        self, finishes: list[tuple[str, NewRecord]]
    ) -> list[FinishOutcome | Exception]:
        # not durable: a worker tells no one it finished, so a power loss that takes the
        # result back only hands the attempt out again (ports.TaskQueue.finish)
        return self.backend.tasks.finish_many(self.worker_id, finishes, durable=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._io is not None
        return await on_pool(self._io, lambda: fn(*args))


def _name(error: BaseException) -> str:
    return type(error).__name__


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
