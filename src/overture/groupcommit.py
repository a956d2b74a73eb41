"""Group commit for clients: the sends waiting at one moment share one append.

Every append to the SQLite log is an fsynced transaction (about 0.4 ms), so a process
appending one event per transaction tops out near 2,500 events/s however many threads or
tasks send. A :class:`GroupCommitter` has one flusher thread: each sender queues its records
with a future and the flusher appends everything queued since its last append in one
``log.append``, then resolves each sender's future, so every caller is acknowledged only
once its records are committed. If the shared append fails, each sender's records are
appended on their own, so one bad send fails only its own caller. (SQLite and memory
roll a failed append back whole. A Kafka append is not atomic: a failed shared append may
have delivered some senders' records, which their own append then publishes again, as a
caller retrying a failed send would; engines start one instance per event id.)

An :class:`~overture.AsyncClient` hands over, as one queue item, every send its event
loop started in one iteration (``asyncio.gather`` of many sends is one iteration), so those
share an append whatever the threads' timing; threads' sends group as they arrive. It
passes one callback for all of them (:meth:`GroupCommitter.submit_all` with ``done``)
rather than a ``Future`` each: the callback wakes its loop once for the whole group, where
a future each cost a ``Condition`` and a loop wake-up per send.

The flusher exits when it has been idle for a second and starts again on the next send,
so a client that is never closed leaves no thread behind for long.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .ports import NewRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .ports import AppendLog

Positions = list[tuple[int, int] | None]
Done = Callable[[list["Positions | BaseException"]], None]
"""Called once, from the flusher thread, with each send's positions or error, in order."""


class _Group:
    """The outcomes of sends handed over with one ``done`` callback, as they commit."""

    __slots__ = ("done", "left", "outcomes")

    def __init__(self, count: int, done: Done) -> None:
        self.done = done
        self.left = count
        self.outcomes: list[Positions | BaseException] = [[] for _ in range(count)]

    def settle(self, index: int, outcome: Positions | BaseException) -> None:
        """Only the flusher thread calls this: no lock needed."""
        self.outcomes[index] = outcome
        self.left -= 1
        if not self.left:
            self.done(self.outcomes)


class _Slot:
    """One send of a :class:`_Group`, with the same two methods the flusher uses on a
    ``Future``."""

    __slots__ = ("group", "index")

    def __init__(self, group: _Group, index: int) -> None:
        self.group = group
        self.index = index

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, positions: Positions) -> None:
        self.group.settle(self.index, positions)

    def set_exception(self, error: BaseException) -> None:
        self.group.settle(self.index, error)


Pending = tuple["Sequence[NewRecord]", "Future[Positions] | _Slot"]
_MAX_RECORDS = 2000  # per shared append: bounds one transaction's size and latency
_IDLE_SECONDS = 1.0


class GroupCommitter:
    """Appends of many senders in as few log transactions as they arrive.

    Args:
        log: the log to append to.
    """

    def __init__(self, log: AppendLog) -> None:
        self._log = log
        # each item: the sends handed over together (one, or an event loop's iteration)
        self._queue: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.appends = 0
        """How many ``log.append`` calls the flusher made (for tests and benchmarks)."""

    def submit(self, records: Sequence[NewRecord]) -> Future[Positions]:
        """Queue records for the next shared append; the future resolves to their
        positions (``None`` for a duplicate event id) once they are committed."""
        future: Future[Positions] = Future()
        self._enqueue([(records, future)])
        return future

    def submit_all(self, sends: Sequence[Sequence[NewRecord]], done: Done) -> None:
        """Queue several senders' records together, so they share the next append (each
        still succeeds or fails on its own); once all are committed or failed, ``done``
        gets each one's positions (as :meth:`submit`) or error, in order, from the
        flusher thread."""
        group = _Group(len(sends), done)
        if not sends:
            done([])
            return
        self._enqueue([(records, _Slot(group, i)) for i, records in enumerate(sends)])

    def _enqueue(self, pending: list[Pending]) -> None:
        chunk: list[Pending] = []
        size = 0
        for item in pending:  # items of at most _MAX_RECORDS (bar one large send)
            if chunk and size + len(item[0]) > _MAX_RECORDS:
                self._queue.put(chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += len(item[0])
        self._queue.put(chunk)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._flush, name="overture-group-commit", daemon=True
                )
                self._thread.start()

    def append(self, records: Sequence[NewRecord]) -> Positions:
        """Append and block until committed (the synchronous form of :meth:`submit`)."""
        return self.submit(records).result()

    def close(self) -> None:
        """Commit what is queued, then stop the flusher."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _flush(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing raced in after the timeout
                        self._thread = None
                        return
                continue
            if first is None:
                with self._lock:
                    self._thread = None
                self._drain_after_close()
                return
            group = list(first)
            size = sum(len(records) for records, _ in first)
            stop = False
            while size < _MAX_RECORDS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.extend(item)
                size += sum(len(records) for records, _ in item)
            self._commit(group)
            if stop:
                with self._lock:
                    self._thread = None
                self._drain_after_close()
                return

    def _drain_after_close(self) -> None:
        """Sends queued after close() are still committed, one group."""
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                rest.extend(item)
        if rest:
            self._commit(rest)

    def _commit(self, group: list[Pending]) -> None:
        live = [(records, f) for records, f in group if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self.appends += 1
            positions = self._log.append([r for records, _ in live for r in records])
        except BaseException:
            if len(live) == 1:
                self._one(*live[0])
            else:  # find the sender at fault: each alone, so only it fails
                for records, future in live:
                    self._one(records, future)
            return
        start = 0
        for records, future in live:
            future.set_result(positions[start : start + len(records)])
            start += len(records)

    def _one(self, records: Sequence[NewRecord], future: Future[Positions] | _Slot) -> None:
        try:
            self.appends += 1
            future.set_result(self._log.append(records))
        except BaseException as exc:
            future.set_exception(exc)
