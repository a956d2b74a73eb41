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

Dead letters (``EngineOptions.dlq_retention``, default forever) older than their
retention are deleted by the same passes, at most ``limit`` per pass, in the same batch.
The ids of deleted instances are remembered, a bounded number per engine (a page per
pass in keyed state, ``overture/retention.py``), so that a client can say "deleted after the
retention of 7d" instead of "not found".

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
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import timedelta
from typing import Protocol

from .. import retention as kept
from ..core.status import FINAL
from ..ports import Batch, Record, StateView
from .keyed import KeyedState
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


class Forgets(Protocol):
    """What retention needs of the live instances: to drop the deleted ones from the
    cache (``Instances``; ``overture gc``, which runs with no engine, has none)."""

    def forget(self, instance_ids: Iterable[str]) -> None: ...


class Retention:
    """Deletes finished instances past the retention (a loop ``Participant``).

    Args:
        store: where candidates are found (``StateView.expired``,
            ``expired_dead_letters``).
        retention: how long a finished instance is kept (None: forever).
        instances: the live instances (a deleted one leaves their cache).
        in_flight: the batch being committed, if any (the loop's).
        stats: the engine's counters (``expired``, ``dead_letters_expired``).
        state: the loop's keyed state (the pages of deleted ids).
        owner: names this engine's pages (its first partition: on Kafka an engine's
            partition, so the pages of several engines never share a key).
        trims_log: the store applies ``Batch.trim_log`` (passes then run at least every
            ``LOG_PASS_EVERY`` seconds).
        limit: most instances (and most dead letters) per pass.
        dlq_retention: how long a dead letter is kept (None: until replayed or deleted).
        remembered: most deleted ids the pages hold (default ``DELETED_KEPT``).
    """

    def __init__(
        self,
        store: StateView,
        retention: timedelta | None,
        instances: Forgets,
        in_flight: Callable[[], Batch | None],
        stats: dict[str, int],
        state: KeyedState,
        *,
        owner: int = 0,
        trims_log: bool = False,
        limit: int = PASS_LIMIT,
        dlq_retention: timedelta | None = None,
        remembered: int | None = None,
    ) -> None:
        self._store = store
        self._keeps = retention is not None
        self._seconds = math.inf if retention is None else retention.total_seconds()
        self._letter_seconds = None if dlq_retention is None else dlq_retention.total_seconds()
        self._state = state
        self._owner = owner.to_bytes(4, "big")
        self._remembered = kept.DELETED_KEPT if remembered is None else remembered
        # engine time of the next dead-letter pass (None: none stored, or kept forever)
        self._letters_due: float | None = None if dlq_retention is None else -math.inf
        # when the oldest remembered deleted id is due to be dropped (None: none held)
        self._pages_due: float | None = -math.inf if retention is not None else None
        self._instances = instances
        self._in_flight = in_flight
        self._stats = stats
        self._limit = limit
        self._trims_log = trims_log
        self._log_due = -math.inf
        # the first pass runs at once (after a start)
        self._due: float | None = -math.inf if retention is not None else None
        self._staged: object | None = None  # the batch holding the last pass's deletions
        # the last sealed batch and the expiry of the first instance it finishes: until
        # that batch has committed, the store cannot report those instances
        self._unseen: tuple[object, float] | None = None
        # instances finished by the batches sealed since the last pass (while passes are
        # due: the load a pass has to keep pace with)
        self._finished = 0

    def pass_now(self, stage: Stage, now: float) -> bool:
        """Stage a pass now, whatever is due (``overture gc``: one pass per call, the log
        trimmed by each); False: nothing to delete was found."""
        self._staged = None
        self._due = -math.inf if self._keeps else None
        self._log_due = -math.inf
        if self._letter_seconds is not None:
            self._letters_due = -math.inf
        return self.advance(stage, now)

    def next_due(self) -> float | None:
        """Engine time of the next pass (``None``: nothing finished is stored and the
        log is not trimmed here)."""
        due = [d for d in (self._due, self._letters_due, self._pages_due) if d is not None]
        if self._trims_log and self._keeps:
            due.append(self._log_due)
        return min(due, default=None)

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
        in_flight = self._in_flight()
        if staged is not None and in_flight is staged:
            return False  # the last pass's deletions are still being committed
        self._staged = None
        did = self._letters(stage, now, in_flight)
        passed = self._due is not None and self._due <= now
        if passed:
            did = self._instances_pass(stage, now, in_flight) or did
        # The log's old consumed records go with the same passes (SQLite; see Batch).
        # Their timestamps are the wall clock's at append, so they are judged by the
        # earlier of the two clocks: a virtual clock set ahead (tests) must not make
        # the whole log look old.
        if self._trims_log and self._keeps and (passed or self._log_due <= now):
            stage.batch.trim_log = min(now, time.time()) - self._seconds
            self._log_due = now + LOG_PASS_EVERY
            did = True
        if self._pages_due is not None and self._pages_due <= now:
            self._pages_due = None  # seal drops the old pages and sets it again
            did = True
        if did:
            self._staged = stage.batch
        return did

    def _instances_pass(self, stage: Stage, now: float, in_flight: Batch | None) -> bool:
        limit = max(self._limit, KEEP_UP * self._finished)
        self._finished = 0
        ids, following = self._store.expired(now - self._seconds, limit)
        # a full pass may have left expired ones behind: the next batch goes on at once
        self._due = now if len(ids) >= limit else _plus(following, self._seconds)
        unseen = self._unseen
        if unseen is not None and in_flight is unseen[0]:
            self._due = unseen[1] if self._due is None else min(self._due, unseen[1])
        stage.batch.expired.extend(ids)
        return bool(ids)

    def _letters(self, stage: Stage, now: float, in_flight: Batch | None) -> bool:
        seconds, due = self._letter_seconds, self._letters_due
        if seconds is None or due is None or due > now:
            return False
        ids, following = self._store.expired_dead_letters(now - seconds, self._limit)
        self._letters_due = now if len(ids) >= self._limit else _plus(following, seconds)
        # a letter written again by this batch or the one in flight (a replay that failed
        # again: a new letter under the same id) is not the old one: kept for a later pass
        written = [b.dead_letters for b in (stage.batch, in_flight) if b is not None]
        ids = [i for i in ids if not any(i in letters for letters in written)]
        for dl_id in ids:
            stage.batch.dead_letters[dl_id] = None
        self._stats["dead_letters_expired"] += len(ids)
        return bool(ids)

    def seal(self, stage: Stage, now: float) -> None:
        batch = stage.batch
        # Anything this batch writes of a candidate (it cannot be a change of status:
        # a final status is final, but a row written again) keeps it for a later pass.
        if batch.expired and batch.instances:
            batch.expired[:] = [i for i in batch.expired if i not in batch.instances]
        if batch.expired:
            self._instances.forget(batch.expired)
            self._stats["expired"] += len(batch.expired)
        # retention 0 remembers nothing: an id would be dropped by the next pass anyway
        if self._keeps and self._seconds > 0 and (batch.expired or self._staged is batch):
            self._remember(stage, batch.expired, now)
        if self._letter_seconds is not None:
            created = min(
                (d.created for d in batch.dead_letters.values() if d is not None), default=None
            )
            if created is not None:
                letters_due = created + self._letter_seconds
                if self._letters_due is None or letters_due < self._letters_due:
                    self._letters_due = letters_due
        finished = [row.updated for row in batch.instances.values() if row.status in FINAL]
        self._finished += len(finished)
        first = min(finished, default=None)
        if first is not None and self._keeps:
            due = first + self._seconds
            self._unseen = (batch, due)
            if self._due is None or due < self._due:
                self._due = due

    def settled(self, keep: Collection[str]) -> None:
        pass

    def _remember(self, stage: Stage, deleted: list[str], now: float) -> None:
        """Maintain this engine's pages of deleted ids (``overture/retention.py``), a FIFO
        in deletion order: put ``deleted`` on new pages at its head, then drop from its
        tail the pages deleted a retention ago or more (at most ``limit`` per pass), and
        the oldest ids while more than ``remembered`` are held."""
        cap = self._remembered
        if cap <= 0:
            return
        pages, owner = kept.DELETED, self._owner
        stored = self._state.get(stage, pages, owner)
        head, tail, held = (0, 0, 0) if stored is None else kept.read_counter(stored)
        before = (head, tail, held)
        fresh = deleted[-cap:]  # (more than the cap in one pass: the newest of them)
        for start in range(0, len(fresh), kept.DELETED_PAGE):
            ids = fresh[start : start + kept.DELETED_PAGE]
            stage.put_state(pages, owner + _page(head), kept.deleted_page(now, self._seconds, ids))
            head += 1
            held += len(ids)
        # the oldest page is read again only once it is due (advance clears _pages_due
        # then) or too many ids are held: not on every pass
        if held > cap or self._pages_due is None:
            tail, held = self._drop(stage, head, tail, held, now)
        if (head, tail, held) != before:
            stage.put_state(pages, owner, kept.counter(head, tail, held))

    def _drop(self, stage: Stage, head: int, tail: int, held: int, now: float) -> tuple[int, int]:
        """Drop the FIFO's oldest pages while they are a retention old or more than
        ``remembered`` ids are held (at most ``limit`` pages), and set ``_pages_due``;
        returns the new (tail, held)."""
        pages, owner, cap = kept.DELETED, self._owner, self._remembered
        cutoff = now - self._seconds
        dropped = 0
        self._pages_due = None
        while tail < head:
            place = owner + _page(tail)
            page = self._state.get(stage, pages, place)
            if page is None:  # (never written: nothing to drop)
                tail += 1
                continue
            at, retention, ids = kept.read_page(page)
            if at > cutoff and held <= cap:
                self._pages_due = at + self._seconds  # the next pass drops this page
                break
            if dropped >= self._limit:
                self._pages_due = now  # more are due: the next batch goes on
                break
            excess = held - cap
            if at > cutoff and excess < len(ids):  # too many held: the oldest ids go
                stage.put_state(pages, place, kept.deleted_page(at, retention, ids[excess:]))
                held = cap
                continue
            stage.delete_state(pages, place)
            tail += 1
            held -= len(ids)
            dropped += 1
        return tail, held


def _page(number: int) -> bytes:
    """A page's key after its owner's prefix."""
    return number.to_bytes(8, "big")


def _plus(finished: float | None, seconds: float) -> float | None:
    return None if finished is None else finished + seconds
