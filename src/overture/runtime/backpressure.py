"""Backpressure on task queues: at most ``max_open_tasks_per_queue`` open attempts each.

An engine that calls faster than its workers finish would otherwise fill a queue without
bound (every attempt a queue entry, claimed oldest first, so a late one waits behind all
of them anyway). Past the bound a call still gets its durable task row, in a third state
(``work.TASK_QUEUED``): its attempt is not on the queue yet. When an open attempt of the
queue ends (its result applied, its deadline passed, its instance ended), the oldest
waiting row is *released*: due at once, so the next due-work scan publishes it with a
fresh deadline (the time it waited is not part of its attempt).

The row's payload names its queue and its place in line (``queued:<ordinal>:<queue>``),
so a restart rebuilds the line in the same order from the stored rows; a published row's
payload names its queue (``published:<queue>``) so the open attempts are counted again
too. Nothing here is staged: the counts and the line are derived from the rows, and a
release only changes a row's place in the in-memory schedule (the stored row keeps its
far-future due time, and the restart releases it again if it still waits).

:class:`OpenTasks` is that bookkeeping; ``runtime/tasks.py`` asks it whether a call may
publish now, and ``Work`` tells it of every task row that ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from ..ports import WorkRow
from .observer import NO_OBSERVER, Observer
from .work import TASK_PUBLISHED, TASK_QUEUED, task_state

Release = Callable[[str], None]
"""Makes the work row of that id due at once (``Work.release``)."""


def published_payload(queue: str) -> bytes:
    """The payload of a task row whose attempt is open on ``queue``."""
    return TASK_PUBLISHED + b":" + queue.encode()


def waiting_payload(ordinal: int, queue: str) -> bytes:
    """The payload of a task row whose attempt waits, ``ordinal``-th in line, for room
    on ``queue``."""
    return b"%s:%d:%s" % (TASK_QUEUED, ordinal, queue.encode())


def queue_of(row: WorkRow) -> str | None:
    """The queue a published or waiting row names; None for a published row stored
    before rows named their queue (a bare ``published``) and for a backoff row."""
    parts = (row.payload or b"").split(b":", 2)
    if parts[0] == TASK_PUBLISHED and len(parts) == 2:
        return parts[1].decode()
    if parts[0] == TASK_QUEUED and len(parts) == 3:
        return parts[2].decode()
    return None


def ordinal_of(row: WorkRow) -> int:
    """A waiting row's place in line."""
    return int((row.payload or b"").split(b":", 2)[1])


class OpenTasks:
    """Open attempts per queue, and the line of the calls waiting for room.

    Args:
        limit: most open attempts per queue (``EngineOptions.max_open_tasks_per_queue``).
        release: makes a waiting row due at once.
        rows: looks a work row up by id (``Work.get``): a line entry whose row went (its
            instance ended) or changed is skipped.
        observer: told of each queue's open attempts whenever their number changes.
    """

    def __init__(
        self,
        limit: int,
        release: Release,
        rows: Callable[[str], WorkRow | None],
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self._observer = observer
        self._limit = limit
        self._release = release
        self._rows = rows
        self._open: dict[str, str] = {}  # row id -> queue, of published rows
        self._count: dict[str, int] = {}  # queue -> open attempts
        self._released: dict[str, str] = {}  # row id -> queue: released, not yet published
        self._held: dict[str, int] = {}  # queue -> released rows (their room is theirs)
        self._line: dict[str, list[tuple[int, str]]] = {}  # queue -> heap of (ordinal, id)
        self._next = 0

    def load(self, rows: Iterable[WorkRow], queue_for: Callable[[WorkRow], str]) -> None:
        """Rebuild from the stored task rows (at start) and release what fits.

        Args:
            rows: every stored work row.
            queue_for: the queue of a published row that does not name it.
        """
        for row in rows:
            if row.kind != "task":
                continue
            kind = task_state(row)
            if kind == TASK_PUBLISHED:
                self.opened(row.id, queue_of(row) or queue_for(row))
            elif kind == TASK_QUEUED:
                ordinal = ordinal_of(row)
                self._next = max(self._next, ordinal + 1)
                heapq.heappush(self._line.setdefault(queue_of(row) or "", []), (ordinal, row.id))
        for queue in list(self._line):
            self._fill(queue)

    def may_open(self, queue: str) -> bool:
        """Whether a new attempt on ``queue`` may be published now: there is room, and no
        earlier call waits for it (the line is kept in order)."""
        taken = self._count.get(queue, 0) + self._held.get(queue, 0)
        return taken < self._limit and not self._waiting(queue)

    def wait(self, row_id: str, queue: str) -> int:
        """Put a call's row in line for ``queue``; returns its ordinal (for its payload)."""
        ordinal = self._next
        self._next += 1
        heapq.heappush(self._line.setdefault(queue, []), (ordinal, row_id))
        return ordinal

    def is_released(self, row_id: str) -> bool:
        """Whether the waiting row ``row_id`` was released: it may publish now, in the
        room kept for it (until it publishes, ``opened``, or goes, ``ended``)."""
        return row_id in self._released

    def opened(self, row_id: str, queue: str) -> None:
        """An attempt of row ``row_id`` was published on ``queue``."""
        if self._released.pop(row_id, None) is not None:
            self._held[queue] -= 1  # the room it held is its open attempt's now
        self._open[row_id] = queue
        count = self._count[queue] = self._count.get(queue, 0) + 1
        self._observer.tasks_open(queue, count)

    def ended(self, row: WorkRow) -> None:
        """A task row's current state ended (``Work.end_attempt``): an open attempt
        closed, or a released row went (with its instance) or cannot publish (it is
        parked); room is given to the line."""
        queue = self._open.pop(row.id, None)
        if queue is not None:
            self._count[queue] -= 1
            self._observer.tasks_open(queue, self._count[queue])
            self._fill(queue)
            return
        queue = self._released.pop(row.id, None)
        if queue is not None:  # released, then gone before it published: its room frees
            self._held[queue] -= 1
            self._fill(queue)

    def open_count(self, queue: str) -> int:
        """Attempts open on ``queue`` now."""
        return self._count.get(queue, 0)

    def waiting_count(self, queue: str) -> int:
        """Calls waiting in line for ``queue`` (released ones included)."""
        return self._held.get(queue, 0) + sum(
            1 for _, row_id in self._line.get(queue, ()) if self._still_waiting(row_id)
        )

    def _fill(self, queue: str) -> None:
        """Release the oldest waiting rows of ``queue`` while it has room."""
        line = self._line.get(queue)
        while line and self._count.get(queue, 0) + self._held.get(queue, 0) < self._limit:
            _, row_id = heapq.heappop(line)
            if not self._still_waiting(row_id):
                continue  # its instance ended, or it was released already
            self._released[row_id] = queue
            self._held[queue] = self._held.get(queue, 0) + 1
            self._release(row_id)

    def _waiting(self, queue: str) -> bool:
        line = self._line.get(queue)
        while line and not self._still_waiting(line[0][1]):
            heapq.heappop(line)
        return bool(line) or self._held.get(queue, 0) > 0

    def _still_waiting(self, row_id: str) -> bool:
        row = self._rows(row_id)
        return (
            row is not None
            and row.kind == "task"
            and task_state(row) == TASK_QUEUED
            and row_id not in self._released
        )
