"""Waiting for instances to finish, woken by the commit that finishes them.

Shared by :class:`~overture.Client` and :class:`~overture.AsyncClient`. A
:class:`Results` keeps the futures of the instances its client waits for and one watcher
on the backend (``watch_finished``): the memory backend calls it from the committing
thread, the SQLite backend rings the client's bell after the engine's commit (see
``backends/sqlite.py``), the Kafka backend's follower reads the changelog as the cluster
delivers it. A wakeup names the finished instances, so each is read from the store once,
when it has finished (every backend declares ``watch_finished``: no polling).

An :class:`~overture.AsyncClient` waits with asyncio futures of its own loop
(:meth:`Results.future_async`), not ``concurrent.futures`` ones wrapped for asyncio: the
instances one wake-up finished are handed to each loop in one ``call_soon_threadsafe``,
where a wrapped future each cost a ``Condition`` and a loop wake-up per instance.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Union

from .errors import InstanceFailed
from .ports import Backend, InstanceRow
from .protocol import FINAL, Status

_Waiter = Union[Future[InstanceRow], "asyncio.Future[InstanceRow]"]


class Results:
    """Futures of finished instances of one backend.

    Args:
        backend: the backend the engine commits to.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Waiter]] = {}
        self._unwatch: Callable[[], None] | None = None
        self._closed = False

    def future(self, instance_id: str) -> Future[InstanceRow]:
        """A future of the instance's row once it is final (completed, failed, cancelled).

        The caller may cancel it (a timeout): :meth:`forget` drops it.
        """
        future: Future[InstanceRow] = Future()
        with self._lock:
            self._waiting.setdefault(instance_id, []).append(future)
            self._watch()
        # after the watcher is in place: a commit from now on wakes us, one before is seen
        self.check(instance_id)
        return future

    def future_async(self, instance_id: str) -> asyncio.Future[InstanceRow]:
        """On an event loop: :meth:`future` as a future of this loop, resolved on it.

        The caller then calls :meth:`check` (inline, or in a thread if reading the store
        may block), as :meth:`future` does itself."""
        waiter: asyncio.Future[InstanceRow] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.setdefault(instance_id, []).append(waiter)
            self._watch()
        return waiter

    def forget(self, instance_id: str, future: _Waiter) -> None:
        """Stop waiting with ``future`` (it timed out)."""
        with self._lock:
            futures = self._waiting.get(instance_id)
            if futures is not None and future in futures:
                futures.remove(future)
                if not futures:
                    del self._waiting[instance_id]

    def wait(self, instance_id: str, timeout: float, *, shown: str | None = None) -> InstanceRow:
        """Block until the instance is final (``shown``: the id as the caller gave it).

        Raises:
            TimeoutError: it did not finish in time.
        """
        future = self.future(instance_id)
        try:
            return future.result(timeout)
        except TimeoutError:
            self.forget(instance_id, future)
            raise self.timed_out(shown or instance_id, instance_id, timeout) from None

    def timed_out(self, shown: str, instance_id: str, timeout: float) -> TimeoutError:
        """The error of a wait that timed out, saying where the instance is."""
        row = self._backend.store.instance(instance_id)
        status = "not started" if row is None else row.status
        return TimeoutError(f"instance {shown} still {status} after {timeout:g}s")

    def close(self) -> None:
        """Stop the watcher; pending futures are cancelled."""
        with self._lock:
            self._closed = True
            unwatch, self._unwatch = self._unwatch, None
            pending = [f for futures in self._waiting.values() for f in futures]
            self._waiting.clear()
        if unwatch is not None:
            unwatch()
        for future in pending:
            if isinstance(future, Future):
                future.cancel()
            else:  # on its own loop, which may be another thread's
                try:
                    future.get_loop().call_soon_threadsafe(future.cancel)
                except RuntimeError:
                    pass

    # -- internals ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Start the watcher once (under the lock)."""
        if self._unwatch is not None or self._closed:
            return
        self._unwatch = self._backend.watch_finished(self._woken)

    def _woken(self, finished: list[str] | None) -> None:
        with self._lock:
            ids = (
                list(self._waiting)
                if finished is None
                else [i for i in finished if i in self._waiting]
            )
        self._resolve([row for row in map(self._final, ids) if row is not None])

    def check(self, instance_id: str) -> None:
        """Read the instance; resolve its futures if it is final."""
        row = self._final(instance_id)
        if row is not None:
            self._resolve([row])

    def _final(self, instance_id: str) -> InstanceRow | None:
        row = self._backend.store.instance(instance_id)
        return row if row is not None and row.status in FINAL else None

    def _resolve(self, rows: list[InstanceRow]) -> None:
        """Resolve the futures of these final instances: threads' futures here, each
        loop's futures in one call on that loop (directly if this is that loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, InstanceRow]]] = {}
        with self._lock:
            waiters = [(w, row) for row in rows for w in self._waiting.pop(row.id, ())]
        for waiter, row in waiters:
            if isinstance(waiter, Future):
                if waiter.set_running_or_notify_cancel():
                    waiter.set_result(row)
            else:
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, row))
        if not by_loop:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, done in by_loop.items():
            if loop is running:
                _settle(done)
                continue
            try:
                loop.call_soon_threadsafe(_settle, done)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass


def _settle(done: list[tuple[asyncio.Future[InstanceRow], InstanceRow]]) -> None:
    for waiter, row in done:
        if not waiter.done():
            waiter.set_result(row)


def outcome(row: InstanceRow) -> Any:
    """The result of a finished instance.

    Raises:
        InstanceFailed: it failed or was cancelled (carries the instance and its error).
    """
    if row.status == Status.COMPLETED:
        return row.result
    raise InstanceFailed(row.id, row.status, row.error)
