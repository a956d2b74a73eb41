"""Threads for the worker's blocking calls, awaited from its event loop.

The worker's port calls (claim, heartbeat, finish: SQLite waits for the write lock and
an fsync) and its sync task functions run in daemon threads, never on the loop that runs
async tasks; :func:`on_pool` awaits a call on any pool with a ``run(job)`` method (this
module's :class:`PortThreads`, or the runtime's ``DaemonThreadPool`` for task functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["Pool", "PortThreads", "on_pool"]

T = TypeVar("T")


class PortThreads:
    """Daemon threads for port calls, one more started whenever a call finds every
    thread busy (up to ``size``), as ``ThreadPoolExecutor`` does but never joined at exit.

    Not the elastic ``DaemonThreadPool`` of the runtime: it adds threads only once every
    busy one has been in its call for 2 ms, and a finish takes ~1 ms (one fsync), so the
    finishes of many slots would queue behind one thread one at a time. Issued at once,
    they share one transaction (the SQLite queue group-commits them).
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], bool] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by a thread that waits for a job
        self._lock = threading.Lock()
        self._threads = 0

    def run(self, job: Callable[[], bool]) -> None:
        """Queue ``job`` (it must catch its own exceptions); an idle thread takes it, or
        a new one while there are fewer than ``size``."""
        self._jobs.put(job)
        if self._idle.acquire(blocking=False):
            return  # an idle thread takes it
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            self._idle.release()

    def shutdown(self) -> None:
        """Let the threads end once the jobs queued before this are done."""
        for _ in range(self._threads):
            self._jobs.put(None)


class Pool(Protocol):
    """Anything that runs a job on one of its threads."""

    def run(self, job: Callable[[], bool]) -> None: ...


async def on_pool(pool: Pool, call: Callable[[], T]) -> T:
    """``call()`` on one of the pool's threads, awaited on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile (a stop's grace ran out)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def job() -> bool:
        value: Any = None
        error: BaseException | None = None
        try:
            value = call()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)
        return False

    pool.run(job)
    return await future
