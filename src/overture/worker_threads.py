"""Threads for the worker's blocking calls, awaited from its event loop.

The worker's port calls (claim, heartbeat, finish: SQLite waits for the write lock and
an fsync) and its sync task functions run in daemon threads, never on the loop that runs
async tasks; :func:`on_pool` awaits a call on any pool with a ``run(job)`` method (this
module's :class:`PortThreads`, or the runtime's ``DaemonThreadPool`` for task functions).
A :class:`Coalescer` hands the calls made in one turn of the loop to one batch call (a
worker's finishes: one transaction, one round trip, for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

__all__ = ["Coalescer", "Pool", "PortThreads", "on_pool"]

T = TypeVar("T")
Item = TypeVar("Item")  # an item of a batch


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
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile (a stop's grace ran out)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    _submit(pool, call, settle)
    return await future


class Coalescer(Generic[Item, T]):
    """Await ``batch(items)`` for items as they come, one call for all the items asked
    for in the same turn of the event loop.

    A worker's attempts that end together (woken by one commit, they run in the same
    turns) are finished in one call of ``TaskQueue.finish_many``: one SQLite transaction
    (one lookup, one write of the results, one commit) or one Kafka round trip, rather
    than one on a thread of its own each. ``batch`` runs on one of ``pool``'s threads and
    returns, in order, each item's value or the exception its caller gets; an exception
    it raises is every caller's.
    """

    def __init__(self, pool: Pool, batch: Callable[[list[Item]], list[T | Exception]]) -> None:
        self._pool = pool
        self._batch = batch
        self._waiting: list[tuple[Item, asyncio.Future[T]]] = []

    async def call(self, item: Item) -> T:
        """``item``'s value, once the batch it joined returned."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) == 1:  # the first of this turn: its batch goes next turn
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        items = [item for item, _ in waiting]

        def settle(values: list[T | Exception] | None, error: BaseException | None) -> None:
            if values is not None and len(values) != len(waiting):  # a bug of ``batch``
                error = RuntimeError(f"{len(values)} values for a batch of {len(waiting)}")
                values = None
            for i, (_, future) in enumerate(waiting):
                if future.done():  # cancelled meanwhile (a stop's grace ran out)
                    continue
                value = values[i] if values is not None else error
                if isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_result(cast(T, value))  # not None: ``values`` is set

        _submit(self._pool, lambda: self._batch(items), settle)


def _submit(
    pool: Pool, call: Callable[[], Any], settle: Callable[[Any, BaseException | None], None]
) -> None:
    """Run ``call()`` on one of the pool's threads, then ``settle(value, error)`` on the
    running loop (not at all if the loop is closed by then: nobody waits)."""
    loop = asyncio.get_running_loop()

    def job() -> bool:
        value: Any = None
        error: BaseException | None = None
        try:
            value = call()
        except BaseException as exc:  # handed to the awaiting coroutine(s)
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)
        return False

    pool.run(job)
