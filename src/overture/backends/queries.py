"""The instance queries of the dashboard, answered over rows held in memory.

The memory backend (and the Kafka backend's in-memory view of its changelog) answer
:meth:`~overture.ports.StateView.find_instances` and
:meth:`~overture.ports.StateView.instance_activity` here; SQLite answers them in SQL with
its indexes, and the conformance suite holds all of them to the same results.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from ..ports import ActivityRow, InstanceQuery, InstanceRow


def matches(row: InstanceRow, query: InstanceQuery) -> bool:
    """Whether ``row`` is among the instances ``query`` selects (its cursor included)."""
    if query.process is not None and row.process != query.process:
        return False
    if query.status is not None and row.status != query.status:
        return False
    if query.key is not None and row.key != query.key:
        return False
    if query.created_from is not None and row.created < query.created_from:
        return False
    if query.created_to is not None and row.created >= query.created_to:
        return False
    if query.search is not None and not (
        row.id.startswith(query.search) or row.key == query.search
    ):
        return False
    return query.before is None or (row.created, row.id) < query.before


def find(rows: Iterable[InstanceRow], query: InstanceQuery) -> list[InstanceRow]:
    """The page of ``rows`` that ``query`` selects, newest first."""
    found = [row for row in rows if matches(row, query)]
    found.sort(key=lambda r: (r.created, r.id), reverse=True)
    return found[: query.limit]


def activity(
    rows: Iterable[InstanceRow], since: float, width: float, finished: tuple[str, str]
) -> list[ActivityRow]:
    """Started/completed/failed counts per bucket (``finished``: the stored names of the
    completed and failed statuses)."""
    counts: dict[int, list[int]] = {}
    for row in rows:
        if row.created >= since:
            counts.setdefault(math.floor((row.created - since) / width), [0, 0, 0])[0] += 1
        if row.updated >= since and row.status in finished:
            column = 1 if row.status == finished[0] else 2
            counts.setdefault(math.floor((row.updated - since) / width), [0, 0, 0])[column] += 1
    return [ActivityRow(since + bucket * width, *counts[bucket]) for bucket in sorted(counts)]


def counts(rows: Iterable[InstanceRow], process: str | None) -> dict[tuple[str, str], int]:
    """How many of ``rows`` each (process, status) has (of one process if given)."""
    return dict(
        Counter((r.process, r.status) for r in rows if process is None or r.process == process)
    )
