"""Waiting for instances to finish, woken by the commit that finishes them.

Shared by :class:`~overture.Client` and :class:`~overture.AsyncClient`. A
:class:`Results` keeps the futures of the instances its client waits for and one watcher
on the backend (``watch_finished``): the memory backend calls it from the committing
thread, the SQLite backend rings the client's bell after the engine's commit (see
``backends/sqlite.py``), the Kafka backend's follower reads the changelog as the cluster
delivers it. A wakeup names the finished instances, so each is read from the store once,
when it has finished (every backend declares ``watch_finished``: no polling).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .errors import InstanceFailed
from .ports import Backend, InstanceRow
from .protocol import FINAL, Status


class Results:
    """Futures of finished instances of one backend.

    Args:
        backend: the backend the engine commits to.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Future[InstanceRow]]] = {}
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
        self._check(instance_id)
        return future

    def forget(self, instance_id: str, future: Future[InstanceRow]) -> None:
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
            future.cancel()

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
        for instance_id in ids:
            self._check(instance_id)

    def _check(self, instance_id: str) -> None:
        """Read the instance; resolve its futures if it is final."""
        row = self._backend.store.instance(instance_id)
        if row is None or row.status not in FINAL:
            return
        with self._lock:
            futures = self._waiting.pop(instance_id, [])
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_result(row)


def outcome(row: InstanceRow) -> Any:
    """The result of a finished instance.

    Raises:
        InstanceFailed: it failed or was cancelled (carries the instance and its error).
    """
    if row.status == Status.COMPLETED:
        return row.result
    raise InstanceFailed(row.id, row.status, row.error)
