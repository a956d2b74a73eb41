"""Retention: the engine deletes finished instances once they are older than
``EngineOptions.retention``, through its own commits.

Deleting finished work is a change of state like any other, so it goes through the
partition loop: this participant stages, in a batch of the loop, the ids of at most
``PASS_LIMIT`` (or, under load, ``KEEP_UP`` times the instances finished since the
previous pass) finished instances (completed, failed, cancelled) whose finish
time is before ``now - retention`` on the engine clock, as ``Batch.expired``. The store
deletes each with everything of its own (journal, waits, work rows, buffered inbox
events, ended task attempts) in the same transaction as the rest of the batch, so a
crash leaves every instance wholly there or wholly gone. Running, waiting and parked
(stuck) instances are never candidates: only the final statuses are.

A pass runs only when the previous pass's deletions committed (its batch is no longer in
flight), and only when one is due: the store answers, with the candidates, the finish
time of the oldest finished instance left, and every batch that finishes an instance
brings the next pass forward to that finish time plus the retention. An idle engine
therefore wakes exactly when the next instance expires (``next_due``), not on a poll.

Dedup of triggers after deletion: the instance id derives from the trigger's id
(``core/identity.py``), so while the instance is stored a re-delivered trigger finds it
and starts nothing. Once deleted, the engine has no memory of it: a trigger delivered
again *after* the retention would start a new instance. The log's position (committed
atomically with every batch) means the engine never re-reads a record it consumed; what
remains is a producer sending the same event id again, which SQLite's log refuses
(``log_event_id``) for as long as the log keeps the record. Rejected design: a table of
every deleted id, kept forever, would be exactly the unbounded growth retention removes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta

from ..core.status import FINAL
from ..ports import Record, StateView
from .instances import Instances
from .staging import Stage

LOG_PASS_EVERY = 60.0
"""Seconds (engine clock) between passes on a backend that trims its log, even when no
instance expires: the log of a busy handler-only app must shrink too."""

PASS_LIMIT = 200
"""Most instances one pass deletes (one engine batch) when the engine is not finishing
instances: small enough that the batch's commit stays close to an ordinary one, so
deletion never stalls the engine's commits."""

KEEP_UP = 2
"""Under load a pass may delete up to this many times the instances finished since the
previous pass: deletion keeps pace with completion (and catches up a backlog) while each
pass's deletions stay proportional to the work the engine's batches already do. (A fixed
200 per pass, with one pass in flight at a time, deleted about 250 instances a second:
a W1 run of 1,000,000 on SQLite with a 1-minute retention ended with about 750,000
instances past their retention still in the file; docs/retention.md.)"""


class Retention:
    """Deletes finished instances past the retention (a loop ``Participant``).

    Args:
        store: where candidates are found (``StateView.expired``).
        retention: how long a finished instance is kept.
        instances: the live instances (a deleted one leaves their cache).
        in_flight: the batch being committed, if any (the loop's).
        stats: the engine's counters (``expired``).
        trims_log: the store applies ``Batch.trim_log`` (passes then run at least every
            ``LOG_PASS_EVERY`` seconds).
        limit: most instances per pass.
    """

    def __init__(
        self,
        store: StateView,
        retention: timedelta,
        instances: Instances,
        in_flight: Callable[[], object | None],
        stats: dict[str, int],
        *,
        trims_log: bool = False,
        limit: int = PASS_LIMIT,
    ) -> None:
        self._store = store
        self._seconds = retention.total_seconds()
        self._instances = instances
        self._in_flight = in_flight
        self._stats = stats
        self._limit = limit
        self._trims_log = trims_log
        self._log_due = -math.inf
        self._due: float | None = -math.inf  # the first pass runs at once (after a start)
        self._staged: object | None = None  # the batch holding the last pass's deletions
        # the last sealed batch and the expiry of the first instance it finishes: until
        # that batch has committed, the store cannot report those instances
        self._unseen: tuple[object, float] | None = None
        # instances finished by the batches sealed since the last pass (while passes are
        # due: the load a pass has to keep pace with)
        self._finished = 0

    def next_due(self) -> float | None:
        """Engine time of the next pass (``None``: nothing finished is stored and the
        log is not trimmed here)."""
        if not self._trims_log:
            return self._due
        return self._log_due if self._due is None else min(self._due, self._log_due)

    # -- Participant -----------------------------------------------------------------------

    def begin(self, stage: Stage, now: float) -> None:
        pass

    def consume(self, stage: Stage, records: Sequence[Record], now: float) -> None:
        pass

    def advance(self, stage: Stage, now: float) -> bool:
        due = self.next_due()
        if due is None or due > now:
            self._finished = 0  # (a backlog found later goes in passes of the floor)
            return False
        staged = self._staged
        if staged is not None and self._in_flight() is staged:
            return False  # the last pass's deletions are still being committed
        self._staged = None
        limit = max(self._limit, KEEP_UP * self._finished)
        self._finished = 0
        ids, following = self._store.expired(now - self._seconds, limit)
        # a full pass may have left expired ones behind: the next batch goes on at once
        self._due = now if len(ids) >= limit else _plus(following, self._seconds)
        unseen = self._unseen
        if unseen is not None and self._in_flight() is unseen[0]:
            self._due = unseen[1] if self._due is None else min(self._due, unseen[1])
        # The log's old consumed records go with the same passes (SQLite; see Batch).
        # Their timestamps are the wall clock's at append, so they are judged by the
        # earlier of the two clocks: a virtual clock set ahead (tests) must not make
        # the whole log look old.
        if self._trims_log:
            stage.batch.trim_log = min(now, time.time()) - self._seconds
            self._log_due = now + LOG_PASS_EVERY
        elif not ids:
            return False
        stage.batch.expired.extend(ids)
        self._staged = stage.batch
        return True

    def seal(self, stage: Stage, now: float) -> None:
        batch = stage.batch
        # Anything this batch writes of a candidate (it cannot be a change of status:
        # a final status is final, but a row written again) keeps it for a later pass.
        if batch.expired and batch.instances:
            batch.expired[:] = [i for i in batch.expired if i not in batch.instances]
        if batch.expired:
            self._instances.forget(batch.expired)
            self._stats["expired"] += len(batch.expired)
        finished = [row.updated for row in batch.instances.values() if row.status in FINAL]
        self._finished += len(finished)
        first = min(finished, default=None)
        if first is not None:
            due = first + self._seconds
            self._unseen = (batch, due)
            if self._due is None or due < self._due:
                self._due = due

    def settled(self, keep: Collection[str]) -> None:
        pass


def _plus(finished: float | None, seconds: float) -> float | None:
    return None if finished is None else finished + seconds
