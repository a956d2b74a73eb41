"""The host: runs the engines of one process for the partitions it owns.

Every backend hands partitions over the same way (``Backend.claim``): an embedded one
hands itself over at once and the host runs one engine owning every partition; on Kafka
(``capabilities.partitioned``) the process is a member of the engine group, and the
host runs one engine per assigned partition, starting and stopping them as the group
rebalances: an engine whose partition is revoked is drained (its last batch committed)
before the revocation returns, so the next owner starts exactly where it stopped.

An engine that fails (a Kafka transaction that could not commit, say) is restarted from
what its partition committed (its state restored afresh from the changelog), after a
pause that grows up to 10 s; the failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Unpack

from ..app import App
from ..codec import Codec
from ..errors import Fenced
from ..ports import Backend, Claim, EngineBackend
from .clock import Clock, SystemClock
from .engine import Engine, EngineKeywords
from .options import EngineOptions

log = logging.getLogger("overture.host")


class Host:
    """Runs the engines of ``app`` for the partitions this process owns.

    Args:
        clock: time source of every engine.
        options: how each engine runs (its ``partitions`` are set per engine); its
            ``observer`` is also told of rebalances.
        drive: the engines run only when :meth:`run_until_idle` drives them (tests);
            otherwise :meth:`run` keeps them running.
        codec: turns records into events and back, for every engine (as for
            :class:`Engine`).
        **keywords: options one by one, overriding ``options`` (as for :class:`Engine`).
    """

    def __init__(
        self,
        app: App,
        backend: Backend,
        *,
        clock: Clock | None = None,
        options: EngineOptions | None = None,
        drive: bool = False,
        codec: Codec | None = None,
        **keywords: Unpack[EngineKeywords],
    ) -> None:
        options = options or EngineOptions()
        if keywords:
            options = dataclasses.replace(options, **keywords)
        self.app = app
        self.backend = backend
        self.clock: Clock = clock or SystemClock()
        self.options = options
        self.drive = drive
        self.codec = codec
        self.engines: dict[int, Engine] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._membership: Claim | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._failed: BaseException | None = None
        self._grace = 5.0
        self._done = asyncio.Event()

    @property
    def partitioned(self) -> bool:
        """Whether partitions are shared out by a group (Kafka)."""
        return self.backend.capabilities.partitioned

    @property
    def unready(self) -> str | None:
        """Why this host should not get traffic yet (``None``: it owns its partitions
        and its engines consume them): not started, stopping, failed, no partition
        assigned, or an assigned partition whose engine is not running. Read on the
        host's loop (the HTTP API's ``/readyz``)."""
        if self._stopping:
            return "the engine is stopping"
        if self._membership is None or self._loop is None:
            return "the engine has not claimed its partitions yet"
        if self._failed is not None:
            return f"the engine failed: {self._failed}"
        assigned = set(self._membership.assigned)
        if not assigned:
            return "no partition is assigned to this engine"
        owned = set(self.engines)  # embedded: engine 0 owns the whole log, assigned as [0]
        if owned != assigned:
            missing = sorted(assigned - owned)
            return f"partition(s) {missing} assigned but their engines not started yet"
        if not self.drive and any(
            p not in self._tasks or self._tasks[p].done() for p in self.engines
        ):
            return "an engine is not running"
        return None

    def _engine(self, backend: EngineBackend, partitions: list[int] | None = None) -> Engine:
        options = self.options
        if partitions is not None:
            options = dataclasses.replace(options, partitions=partitions)
        return Engine(self.app, backend, clock=self.clock, options=options, codec=self.codec)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the partitions (join the group) and start their engines."""
        self._loop = asyncio.get_running_loop()
        self._membership = await asyncio.to_thread(
            self.backend.claim,
            f"engine:{self.app.name}",
            self._assigned,
            self._revoked,
            self._failed_member,
        )
        if self.drive:  # a test expects its engines to exist once started
            for _ in range(3000):
                if self.engines:
                    break
                await asyncio.sleep(0.01)
            else:
                raise TimeoutError("no partition was assigned within 30 s")

    async def run(self) -> None:
        """Run until :meth:`stop`; raises if an embedded engine crashed."""
        if self._loop is None:
            await self.start()
        await self._done.wait()
        if self._failed is not None:
            raise self._failed

    async def stop(self, grace: float = 5.0) -> None:
        """Drain every engine (``grace`` seconds for running steps) and leave the group."""
        self._stopping = True
        self._grace = grace
        await self._stop_partitions(list(self.engines))
        if self._membership is not None:
            await asyncio.to_thread(self._membership.close)
            self._membership = None
        self._done.set()

    async def abandon(self) -> None:
        """Drop everything without draining, as a crash would (tests)."""
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        engines = list(self.engines.values())
        self.engines.clear()
        for engine in engines:
            await engine.abandon()

    async def close_membership(self) -> None:
        if self._membership is not None:
            await asyncio.to_thread(self._membership.close)
            self._membership = None

    # -- driven mode (tests) ---------------------------------------------------------------

    async def run_until_idle(self) -> None:
        """Drive every engine until nothing is left to do now, Kafka included: every
        committed record of the owned partitions was fetched and handled."""
        if not self.partitioned:
            await self.engines[0].run_until_idle()
            return
        membership = self._membership
        assert membership is not None
        for _ in range(100_000):
            if not self.engines:
                await asyncio.sleep(0.02)  # waiting for the assignment
                continue
            # concurrently: one engine may wait on a step that only another's progress
            # releases (a test's gate), as running engines would
            await asyncio.gather(*(e.run_until_idle() for e in list(self.engines.values())))
            if any(e.has_unread() for e in self.engines.values()):
                continue
            caught_up = await asyncio.to_thread(membership.caught_up)
            if caught_up and not any(e.has_unread() for e in self.engines.values()):
                return
            await asyncio.sleep(0.005)
        raise RuntimeError("the engines did not become idle")

    # -- group callbacks (called from the membership's thread) -------------------------------

    def _assigned(self, backends: Mapping[int, EngineBackend]) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._on_assigned(backends), self._loop)
        future.result()

    def _revoked(self, partitions: list[int]) -> None:
        assert self._loop is not None
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._on_revoked(partitions), self._loop)
        future.result()

    def _failed_member(self, error: BaseException) -> None:
        """The membership cannot go on (its fetching thread died): stop the host."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._failed = error
        loop.call_soon_threadsafe(self._done.set)

    async def _on_assigned(self, backends: Mapping[int, EngineBackend]) -> None:
        if self.partitioned:  # an embedded claim is not a group's rebalance
            self.options.observer.rebalance(sorted(backends), [])  # on the loop's thread
        await self._start_partitions(backends)

    async def _on_revoked(self, partitions: list[int]) -> None:
        if self.partitioned:
            self.options.observer.rebalance([], sorted(partitions))
        await self._stop_partitions(partitions)

    async def _start_partitions(self, backends: Mapping[int, EngineBackend]) -> None:
        for p, backend in backends.items():
            if self._stopping:
                return
            engine = self._engine(backend, backend.owned)
            await engine.start()
            self.engines[p] = engine
            if not self.drive:
                self._tasks[p] = asyncio.create_task(self._supervise(p, backend, engine))

    async def _stop_partitions(self, partitions: list[int]) -> None:
        for p in partitions:
            engine = self.engines.pop(p, None)
            task = self._tasks.pop(p, None)
            if engine is None:
                continue
            try:
                await engine.stop(self._grace)
            except Exception:
                log.exception("stopping the engine of partition %d", p)
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task

    async def _supervise(self, p: int, backend: EngineBackend, engine: Engine) -> None:
        pause = 0.5
        while True:
            try:
                await engine.run()
                return  # stopped
            except Exception as error:
                if self._stopping or self.engines.get(p) is not engine:
                    return
                if isinstance(error, Fenced):  # the rebalance will revoke it from us
                    log.warning("partition %d: %s; leaving it to its new owner", p, error)
                    self.engines.pop(p, None)
                    return
                if not self.partitioned:  # the caller reports it
                    self._failed = error
                    self._done.set()
                    return
                log.error(
                    "the engine of partition %d failed (%s: %s); restarting it in %.1fs from "
                    "its last commit",
                    p,
                    type(error).__name__,
                    error,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            if self._stopping or self.engines.get(p) is not engine:
                return
            while True:
                try:
                    await asyncio.to_thread(backend.reload)
                    break
                except Fenced as error:
                    log.warning("partition %d: %s; leaving it to its new owner", p, error)
                    self.engines.pop(p, None)
                    return
                except Exception as error:
                    log.error("restoring partition %d failed (%s); retrying", p, error)
                await asyncio.sleep(pause)
                if self._stopping or self.engines.get(p) is not engine:
                    return
            engine = self._engine(backend, backend.owned)
            await engine.start()
            self.engines[p] = engine
