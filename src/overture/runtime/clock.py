"""Clocks: the engine's only source of time, so tests can skip it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch, and a way to wait for it."""

    def now(self) -> float: ...

    async def wait(self, wake: asyncio.Event, deadline: float | None) -> None:
        """Return when ``wake`` is set or the clock reaches ``deadline``."""


class SystemClock:
    """Real time."""

    def now(self) -> float:
        return time.time()

    async def wait(self, wake: asyncio.Event, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)


class VirtualClock:
    """Time that moves only when a test calls :meth:`advance`.

    Durable timers, retry backoff and wait timeouts all read this clock, so a test can
    run an hour of process time in milliseconds.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._waiters: set[asyncio.Event] = set()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every engine waiting on this clock."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        for wake in list(self._waiters):
            wake.set()

    async def wait(self, wake: asyncio.Event, deadline: float | None) -> None:
        if deadline is not None and deadline <= self._now:
            return
        self._waiters.add(wake)
        try:
            await wake.wait()
        finally:
            self._waiters.discard(wake)
