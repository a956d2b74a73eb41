"""Completion detection without polling: wrap the broker's ``commit``.

The engine hands every batch to ``Store.commit``. The probe replaces that bound method on
the broker object (not the class, and nothing under ``src/``) with a wrapper that calls the
original and, once it has *returned* (for SQLite: the transaction is durable, fsync done),
notes the time and every instance row of the batch that reached a final status. A waiting
client thread is woken through a condition variable, and the timestamps are taken in the
committing thread, so how fast the waiter wakes up does not affect the measured latency.

Cost: one pass over the batch's instance rows per commit (a few microseconds).

With ``track_work=True`` (W3, W4) it also passes over the batch's work rows: handler rows
(ids ``h:<handler>:<event id>``) that reach the store are outstanding until a later commit
deletes them (a handler that finished inside the batch that scheduled it never reaches the
store: it was done at that commit), and timer rows give each instance's stored due time.
"""

from __future__ import annotations

import cProfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from overture.ports import Batch

FINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Done:
    """One finished instance as the probe saw it."""

    committed: float  # time.time() right after the commit returned
    updated: float  # the row's `updated` field (stamped by the engine before the commit)
    key: str | None
    status: str
    created: float = 0.0  # the row's `created` field (the engine's clock when it started)
    instance_id: str = ""


class CommitProbe:
    """Records per-commit statistics and finished instances (by trigger event id)."""

    def __init__(
        self, broker: Any, profiler: cProfile.Profile | None = None, *, track_work: bool = False
    ) -> None:
        self._original: Callable[[Batch], None] = broker.commit
        self.profiler = profiler
        self.track_work = track_work
        self.handlers_pending: dict[str, set[str]] = {}  # event id -> stored handler rows
        self.handlers_done: dict[str, float] = {}  # event id -> commit deleting its last row
        self.timer_due: dict[str, float] = {}  # instance id -> due of its stored timer row
        self._cond = threading.Condition()
        self.done: dict[str, Done] = {}
        self.by_key: dict[str | None, str] = {}
        self.waits_added = 0
        self.last_wait = 0.0  # commit time of the latest batch that added waits
        self.commits = 0
        self.commit_seconds = 0.0
        self.instance_rows = 0
        self.offset_commits = 0
        broker.commit = self._commit

    def _commit(self, batch: Batch) -> None:
        start = time.perf_counter()
        if self.profiler is None:
            self._original(batch)
        else:  # commits never overlap (the engine awaits each), so one profiler is safe
            self.profiler.runcall(self._original, batch)
        elapsed = time.perf_counter() - start
        now = time.time()
        finished = [
            (r.trigger_id, Done(now, r.updated, r.key, r.status, r.created, r.id))
            for r in batch.instances.values()
            if r.status in FINAL
        ]
        added = sum(1 for present in batch.waits.values() if present)
        with self._cond:
            if self.track_work:  # first: a reader must not see completions without these
                self._track(batch, now)
            self.commits += 1
            self.commit_seconds += elapsed
            self.instance_rows += len(batch.instances)
            self.offset_commits += 1 if batch.offsets else 0
            self.waits_added += added
            if added:
                self.last_wait = now
            for trigger_id, done in finished:
                self.done[trigger_id] = done
                self.by_key[done.key] = trigger_id
            if finished or added:
                self._cond.notify_all()

    def _track(self, batch: Batch, now: float) -> None:
        for work_id, row in batch.work.items():
            if work_id.startswith("h:"):
                event_id = work_id.split(":", 2)[2]
                if row is not None:
                    self.handlers_pending.setdefault(event_id, set()).add(work_id)
                    continue
                rows = self.handlers_pending.get(event_id)
                if rows is not None:
                    rows.discard(work_id)
                    if not rows:
                        del self.handlers_pending[event_id]
                        self.handlers_done[event_id] = now
            elif row is not None and row.kind == "timer" and row.instance_id is not None:
                self.timer_due[row.instance_id] = row.due

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block (in a client thread) until ``predicate`` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    @property
    def finished(self) -> int:
        return len(self.done)
