"""Scheduled work (durable timers, step retries, handler runs) ordered by due time. Pure."""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Iterator

from ..ports import WorkRow


class WorkQueue:
    """Work rows by id, by instance, and in a min-heap by due time.

    Replacing a row (a retry with a later due time) leaves its old heap entry behind;
    stale entries are skipped lazily, which keeps every operation O(log n).
    """

    def __init__(self, rows: Iterable[WorkRow] = ()) -> None:
        self._rows: dict[str, WorkRow] = {}
        self._by_instance: dict[str, set[str]] = {}
        self._heap: list[tuple[float, str]] = []
        for row in rows:
            self.put(row)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, work_id: object) -> bool:
        return work_id in self._rows

    def get(self, work_id: str) -> WorkRow | None:
        return self._rows.get(work_id)

    def put(self, row: WorkRow, *, schedule: bool = True) -> None:
        """Add or replace a row. ``schedule=False`` keeps it out of the due-time order:
        for work the caller starts right away (a rescheduled retry, or a restart, puts
        it back in order)."""
        self._rows[row.id] = row
        if row.instance_id is not None:
            self._by_instance.setdefault(row.instance_id, set()).add(row.id)
        if schedule:
            heapq.heappush(self._heap, (row.due, row.id))

    def remove(self, work_id: str) -> WorkRow | None:
        row = self._rows.pop(work_id, None)
        if row is not None and row.instance_id is not None:
            ids = self._by_instance.get(row.instance_id)
            if ids is not None:
                ids.discard(work_id)
                if not ids:
                    del self._by_instance[row.instance_id]
        return row

    def of_instance(self, instance_id: str) -> list[str]:
        return sorted(self._by_instance.get(instance_id, ()))

    def next_due(self, busy: Container[str] = ()) -> float | None:
        """The earliest due time of a row that is not ``busy`` (running)."""
        while self._heap:
            due, work_id = self._heap[0]
            if self._live(due, work_id, busy):
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float, busy: Container[str] = ()) -> Iterator[WorkRow]:
        """Yield rows due at ``now`` (earliest first), skipping ``busy`` ones. Rows stay in
        the queue until removed; each is yielded once per heap entry."""
        while self._heap and self._heap[0][0] <= now:
            due, work_id = heapq.heappop(self._heap)
            if self._live(due, work_id, busy):
                yield self._rows[work_id]

    def _live(self, due: float, work_id: str, busy: Container[str]) -> bool:
        row = self._rows.get(work_id)
        return row is not None and row.due == due and work_id not in busy
