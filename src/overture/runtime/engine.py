"""The engine: owns some of the log's partitions and turns their inputs into committed
state.

``Engine`` wires the runtime's objects together and runs their lifecycle; each object
does one thing and gets what it needs as constructor arguments:

- ``PartitionLoop`` (``loop.py``): consume → stage → commit, commits in order, each
  overlapping the staging of the next batch; its participants take part in every batch;
- ``Processes`` (``processes.py``): the engine's participant: routes records, runs due
  work, applies outcomes, folds quick sync steps, flushes instances;
- ``Router`` (``router.py``): what a record does (dead letter, control, re-key, start,
  handlers, correlate);
- ``Instances`` (``instances.py``): the cache, replay, driving the machines' commands;
- ``Work`` (``work.py``): work rows, attempts, outcomes, retries, handler runs;
- ``Attempts`` and ``Tasks`` (``tasks.py``): remote task attempts published and ended
  with the batch, their results and deadlines applied;
- ``Waits`` (``waits.py``), ``RemoteWaits`` (``remote.py``), ``DeadLetters``
  (``deadletters.py``).

The batch being staged (``Stage``) is made by the loop and passed to every method that
stages something; no object holds a "current batch". Steps and handlers run outside the
critical section (``Executor``); an async step that finishes without suspending is
folded into the same batch, saving a commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import TypedDict, Unpack

from ..app import App
from ..codec import Codec
from ..core.correlation import WaitIndex
from ..errors import ConfigError
from ..ports import Backend, EngineBackend
from ..streams.runtime import Streams
from . import gcpolicy
from .clock import Clock, SystemClock
from .deadletters import DeadLetters
from .decoding import Decoder
from .executor import Executor
from .instances import Instances
from .loop import PartitionLoop
from .observer import Observer
from .options import EngineOptions
from .processes import Processes
from .remote import RemoteWaits
from .retention import Retention
from .router import Router
from .tasks import Attempts, Tasks
from .waits import Waits
from .work import Work


class EngineKeywords(TypedDict, total=False):
    """The options ``Engine`` also takes one by one (see :class:`EngineOptions`)."""

    cache_size: int
    batch_size: int
    group: str | None
    partitions: Sequence[int] | None
    gc_threshold: int | None
    threads: int
    sync_fold: float | None
    observer: Observer


class Engine:
    """Runs an :class:`~overture.App` against a backend.

    Args:
        app: the application.
        backend: an open backend (``overture.backends.open_backend``).
        clock: time source (``VirtualClock`` in tests).
        codec: turns records into events and back, and makes the typed events of
            live and replayed instances (default: ``Codec(app)``; see ``overture.codec``).
        options: how the engine runs (:class:`~overture.runtime.options.EngineOptions`:
            ``cache_size``, ``batch_size``, ``group``, ``partitions``, ``gc_threshold``,
            ``threads``, ``sync_fold``, ``observer``).
        **keywords: any of those options one by one, overriding ``options``.

    Raises:
        ConfigError: an option out of range.
    """

    def __init__(
        self,
        app: App,
        backend: EngineBackend | Backend,
        *,
        clock: Clock | None = None,
        codec: Codec | None = None,
        options: EngineOptions | None = None,
        **keywords: Unpack[EngineKeywords],
    ) -> None:
        if isinstance(backend, str):
            raise ConfigError(
                f"Engine takes a backend object, not the URL {backend!r}: "
                f"Engine(app, overture.backends.open_backend({backend!r}))"
            )
        if not isinstance(backend, EngineBackend):
            # a kafka:// client backend: without this, the first use would fail deep
            # inside with an AttributeError
            raise ConfigError(
                f"an Engine runs on one engine's side of a backend; {backend.url} hands "
                "its partitions to engines through a claim: run it with Host (what "
                "`overture run` does), which claims them"
            )
        options = options or EngineOptions()
        if keywords:
            options = dataclasses.replace(options, **keywords)
        self.app = app
        self.backend = backend
        self.codec = codec = Codec(app) if codec is None else codec
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.group = options.group or f"engine:{app.name}"
        self.executor = Executor(options.threads)
        self.stats = {
            "batches": 0,
            "records": 0,
            "started": 0,
            "finished": 0,
            "rekeyed": 0,
            "folded": 0,
            "task_attempts": 0,
            "task_results_dropped": 0,
            "task_attempts_waited": 0,
            "expired": 0,
            "dead_letters_expired": 0,
        }
        log, store, observer = backend.log, backend.store, options.observer
        consumed = options.partitions
        self._loop = PartitionLoop(
            backend,
            self.group,
            list(range(log.partitions)) if consumed is None else consumed,
            options.batch_size,
            observer,
            self.stats,
        )
        in_flight = self._loop.in_flight
        self._wake = asyncio.Event()
        index = WaitIndex()
        remote = RemoteWaits(codec, index, log.partitions, consumed)
        dead_letters = DeadLetters(codec, store, in_flight, observer)
        self._work = Work(app, codec, self.executor, dead_letters, observer, self._wake.set)
        self._waits = Waits(index, self._work, remote)
        attempts = self._attempts = Attempts(
            app, codec, self._work, observer, self.stats, options.max_open_tasks_per_queue
        )
        self._instances = Instances(
            app,
            codec,
            store,
            options.cache_size,
            self._work,
            attempts,
            self._waits,
            in_flight,
            observer,
            self.stats,
        )
        tasks = Tasks(attempts, self._work, self._instances, observer, self.stats)
        decoder = Decoder(codec)
        router = Router(
            app,
            decoder,
            store,
            log.partitions,
            self._instances,
            self._work,
            self._waits,
            remote,
            dead_letters,
            tasks,
            self.stats,
            observer,
        )
        self._loop.add(
            Processes(
                router,
                self._instances,
                self._work,
                tasks,
                self.executor,
                self.clock.now,
                options.fold_seconds,
                self.stats,
            )
        )
        # Stream operators (windows, patterns): a participant only when the app has some.
        self._streams: Streams | None = None
        if app.streams:
            self._streams = Streams(
                app.name,
                app.streams,
                decoder,
                store,
                log.partitions,
                list(range(log.partitions)) if consumed is None else consumed,
                dead_letters,
                self.stats,
            )
            self._loop.add(self._streams)
        self._retention: Retention | None = None
        if options.retention is not None or options.dlq_retention is not None:
            self._retention = Retention(
                store,
                options.retention,
                self._instances,
                in_flight,
                self.stats,
                self._loop.state,
                owner=min(consumed) if consumed else 0,
                trims_log=backend.capabilities.trims_log,
                dlq_retention=options.dlq_retention,
            )
            self._loop.add(self._retention)
        self._stopping = False
        self._started = False
        self._running = False
        self._grace = 5.0
        self._stopped = asyncio.Event()
        self._release_lock: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._restore_gc: Callable[[], None] | None = None

    # Read-only views of the options, which these names were attributes of before.
    @property
    def cache_size(self) -> int:
        """``options.cache_size``."""
        return self.options.cache_size

    @property
    def batch_size(self) -> int:
        """``options.batch_size``."""
        return self.options.batch_size

    @property
    def gc_threshold(self) -> int | None:
        """``options.gc_threshold``."""
        return self.options.gc_threshold

    @property
    def sync_fold(self) -> float:
        """``options.sync_fold`` in seconds (0.0: never fold)."""
        return self.options.fold_seconds

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the backend and load the state needed to resume (waits, work, keys)."""
        if self._loop.broken:  # failed or abandoned: its memory is not to be trusted
            raise RuntimeError("the engine failed earlier; restart it")
        if self._stopping:  # it would hold the backend's lock without reading the log
            raise RuntimeError("this engine was stopped; an engine runs once: make a new one")
        release = self._release_lock = self.backend.engine_lock()
        store = self.backend.store
        try:
            self._loop.load()
            self._waits.load(store.waits())
            work = store.work()
            self._work.load(work)
            self._attempts.load(work)
            self._instances.load_active(store.active_instances())
            if self._streams is not None:
                self._streams.load()
        except BaseException:
            release()
            raise
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self._unsubscribe = self.backend.log.subscribe(wake)
        self._restore_gc = gcpolicy.raise_threshold(self.options.gc_threshold)
        self._started = True

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: finish the current iteration, give running steps ``grace`` seconds,
        commit their outcomes, and release the backend. Unfinished steps keep their work
        rows and run again after a restart. An engine runs once: stopped, it stays so."""
        self._stop_starting()
        if not self._started:
            return
        self._grace = grace
        self._wake.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self._shutdown()

    async def abandon(self) -> None:
        """Drop everything without draining, as a crash would: running steps are
        abandoned (their work rows run them again after a restart), nothing more is
        committed, the cache is dropped and the backend released. A commit already
        running lands first (a crash just after it). Used by ``Host.abandon`` and the
        test harness's ``restart``."""
        self._stop_starting()
        await self._loop.abandon()
        await self.executor.shutdown(0)
        self._release()

    @property
    def cached_instances(self) -> int:
        """How many live instances the engine holds in memory now."""
        return len(self._instances)

    def has_unread(self) -> bool:
        """Whether an owned partition has records this engine has not consumed yet."""
        return self._loop.has_unread()

    def _stop_starting(self) -> None:
        self._stopping = True
        self._work.stop_starting()

    def _release(self) -> None:
        """Let go of the instances, the doorbell, the backend and the GC setting (and end
        the spans of what was still running)."""
        self._work.end_traces()
        self._instances.close()
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        release, self._release_lock = self._release_lock, None
        if release is not None:
            release()
        restore, self._restore_gc = self._restore_gc, None
        if restore is not None:
            restore()
        self._started = False

    async def _shutdown(self) -> None:
        try:
            await self.executor.shutdown(self._grace)
            if self._work.has_outcomes() and not self._loop.broken:
                await self._iterate(read_log=False)
            if not self._loop.broken:
                await self._loop.settle()
        finally:  # a failed last commit still lets go of the backend and the process
            self._release()

    async def run(self) -> None:
        """Process inputs until :meth:`stop` is called."""
        if self._stopping:
            return  # stopped before it ran
        if not self._started:
            await self.start()
        self._running = True
        try:
            while not self._stopping:
                self._wake.clear()
                if await self._iterate():
                    continue
                await self._idle()
                await self.clock.wait(self._wake, self._next_due())
        finally:
            self._stop_starting()
            try:
                await self._shutdown()
            finally:  # stop() waits for this, even when the shutdown failed
                self._running = False
                self._stopped.set()

    async def run_until_idle(self, max_iterations: int = 100_000) -> None:
        """Process until nothing is left to do *now*: no unread records, no running
        steps, no due work. Timers in the future stay pending (advance the clock)."""
        if not self._started:
            await self.start()
        for _ in range(max_iterations):
            if await self._iterate():
                continue
            await self._idle()
            if self._work.has_outcomes():  # reported while the last commit settled
                continue
            if self.executor.busy:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._next_due()
            if self.has_unread() or (due is not None and due <= self.clock.now()):
                continue
            return
        raise RuntimeError("engine did not become idle")

    def _next_due(self) -> float | None:
        """When the next piece of work, idle stream window or retention pass is due."""
        due = self._work.next_due()
        if self._streams is not None:
            streams = self._streams.next_due()
            if streams is not None:
                due = streams if due is None else min(due, streams)
        if self._retention is not None:
            expiry = self._retention.next_due()
            if expiry is not None and (due is None or expiry < due):
                due = expiry
        return due

    async def _iterate(self, read_log: bool = True) -> bool:
        """One iteration of the loop at the clock's current time."""
        now = self.clock.now()
        return await self._loop.iterate(now, read_log=read_log and not self._stopping)

    async def _idle(self) -> None:
        """Nothing to do: let the last commit land and shrink the cache."""
        await self._loop.settle()
        self._instances.evict()
