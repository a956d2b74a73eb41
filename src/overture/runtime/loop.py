"""The partition loop: consume → stage → commit, in order, each commit overlapping the
staging of the next batch.

One iteration (:meth:`PartitionLoop.iterate`) makes a :class:`~.staging.Stage`, reads up
to ``batch_size`` records from the owned partitions (rotating the first, so a busy
partition cannot starve the others), and hands the stage to every *participant* in
turn, in the order they were added:

1. ``begin(stage, now)``: a new batch starts;
2. ``consume(stage, records, now)``: the records of one partition, in offset order
   (once per partition that had records);
3. ``advance(stage, now) -> bool``: work that needs no record (due timers, outcomes of
   steps); True if it did anything;
4. ``seal(stage, now)``: last changes before the commit (the engine folds its quick sync
   steps and flushes its instances to rows here);
5. then the loop waits for the *previous* batch's commit, calls
   ``settled(keep)`` (``keep``: the instance ids whose newest state is in the batch about
   to be committed, which must not be evicted), and starts this batch's commit.

Everything the participants stage, and the consumed offsets, is one ``Batch`` committed
by one ``Store.commit``: one SQLite transaction, or one Kafka transaction. A later stream
processor takes part in the same batch and commit by being added as a participant: its
state changes are staged in the same ``Stage`` and so commit with the same offsets, in
the same transaction. A crash anywhere before that commit loses the whole iteration,
which is then redone from the same offsets; nothing is half-applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from typing import Protocol

from ..ports import Batch, EngineBackend, Record
from .keyed import KeyedState
from .observer import Observer
from .staging import Stage


class Participant(Protocol):
    """What takes part in the loop's batches (see the module docstring)."""

    def begin(self, stage: Stage, now: float) -> None: ...

    def consume(self, stage: Stage, records: Sequence[Record], now: float) -> None: ...

    def advance(self, stage: Stage, now: float) -> bool: ...

    def seal(self, stage: Stage, now: float) -> None: ...

    def settled(self, keep: Collection[str]) -> None: ...


class PartitionLoop:
    """Consumes partitions and commits batches in order (see the module docstring).

    Args:
        backend: the backend (its log is read, its store committed to; its capabilities
            say whether a commit runs inline or in a thread).
        group: the consumer group whose offsets the batches commit.
        partitions: the partitions consumed.
        batch_size: most records per batch.
        observer: told of batches consumed and commits.
        stats: counters (``batches``, ``records``).
    """

    def __init__(
        self,
        backend: EngineBackend,
        group: str,
        partitions: Sequence[int],
        batch_size: int,
        observer: Observer,
        stats: dict[str, int],
    ) -> None:
        self._log = backend.log
        self._store = backend.store
        # The in-memory backend commits with a few dict updates and no fsync to overlap.
        self._inline = backend.capabilities.commit == "inline"
        self.group = group
        self._partitions = list(partitions)
        self._batch_size = batch_size
        self._observer = observer
        self._stats = stats
        self._participants: list[Participant] = []
        self._positions: dict[int, int] = {}
        self._first_partition = 0
        self._committing: asyncio.Future[None] | None = None
        self._committing_batch: Batch | None = None
        self._commit_began = 0.0
        self.state = KeyedState(self._store, self.in_flight)
        """Keyed state as participants read it (through the batches not committed yet)."""
        self.broken = False
        """True once an iteration or a commit failed: memory may be ahead of (or apart
        from) the store, so this loop never commits again; a restart rebuilds it."""

    def add(self, participant: Participant) -> None:
        """Let ``participant`` take part in every batch (in the order added)."""
        self._participants.append(participant)

    def load(self) -> None:
        """Resume from the committed offsets."""
        committed = self._store.offsets(self.group)
        self._positions = {p: committed.get(p, 0) for p in self._partitions}

    def in_flight(self) -> Batch | None:
        """The batch being committed, whose changes readers of the store cannot see yet."""
        return self._committing_batch

    def has_unread(self) -> bool:
        """Whether a consumed partition has records past this loop's position."""
        return any(self._log.end_offset(p) > pos for p, pos in self._positions.items())

    async def iterate(self, now: float, *, read_log: bool = True) -> bool:
        """Run one iteration; False if there was nothing to do (nothing is committed).

        Raises:
            RuntimeError: an earlier iteration failed (the loop is broken).
        """
        if self.broken:
            raise RuntimeError("the engine failed earlier; restart it")
        try:
            return await self._iterate(now, read_log)
        except BaseException:
            # Memory is now ahead of (or apart from) the store: never commit again from
            # this state. A restart rebuilds everything from the last good commit.
            self.broken = True
            raise

    async def _iterate(self, now: float, read_log: bool) -> bool:
        participants = self._participants
        stage = Stage(self.group, self._batch_size * 4)
        for participant in participants:
            participant.begin(stage, now)
        did = False
        if read_log:
            did = self._consume(stage, now)
        for participant in participants:
            did = participant.advance(stage, now) or did
        if not did:
            return False
        for participant in participants:
            participant.seal(stage, now)
        batch = stage.batch
        await self.settle()  # the previous batch is durable from here on
        if self.broken:  # abandoned while it waited: nothing more is committed
            raise RuntimeError("the engine was abandoned")
        for participant in participants:
            participant.settled(batch.instances)
        if not batch.empty():
            self._start_commit(batch)
        self._stats["batches"] += 1
        return True

    def _consume(self, stage: Stage, now: float) -> bool:
        budget = self._batch_size
        did = False
        parts = list(self._positions)
        # rotate the starting partition so a busy partition cannot starve the others
        self._first_partition = (self._first_partition + 1) % len(parts)
        for part in parts[self._first_partition :] + parts[: self._first_partition]:
            if budget <= 0:
                break
            records = self._log.read(part, self._positions[part], budget)
            if not records:
                continue
            did = True
            budget -= len(records)
            self._observer.batch_consumed(part, len(records))
            for participant in self._participants:
                participant.consume(stage, records, now)
            stage.consumed()
            self._positions[part] = records[-1].offset + 1
            stage.batch.offsets[part] = self._positions[part]
            self._stats["records"] += len(records)
        return did

    def _start_commit(self, batch: Batch) -> None:
        """Commit a batch. On a durable backend the commit (and its fsync) runs in a
        thread while the loop stages the next batch; that one commits only after this
        one has (``settle``), so commits stay in order and the store is never ahead of
        a crash-consistent prefix."""
        observer = self._observer
        rows = _rows(batch)
        observer.commit_started(rows, len(batch.appends))
        began = time.monotonic()
        if self._inline:
            self._store.commit(batch)
            observer.commit_finished(rows, len(batch.appends), time.monotonic() - began)
            return
        loop = asyncio.get_running_loop()
        self._committing = loop.run_in_executor(None, self._store.commit, batch)
        self._committing_batch = batch
        self._commit_began = began

    async def settle(self) -> None:
        """Wait for the batch being committed, if any.

        Raises:
            Exception: what the commit raised (the loop is then broken).
        """
        committing = self._committing
        if committing is None:
            return
        batch = self._committing_batch
        try:
            # Shielded, and forgotten only once it landed: a task cancelled while it
            # waits here (``Host.abandon``) must not hide the running commit from
            # ``abandon``, which waits for it before the backend is let go.
            await asyncio.shield(committing)
        except BaseException:
            self.broken = True
            raise
        finally:
            if self._committing is committing and committing.done():
                self._committing = None
                self._committing_batch = None
        if batch is not None:
            self._observer.commit_finished(
                _rows(batch), len(batch.appends), time.monotonic() - self._commit_began
            )

    async def abandon(self) -> None:
        """Stop as a crash would, except that a commit already running lands first (a
        real crash would kill its thread with the process; here it would go on behind
        a new engine's back): a crash just after that commit."""
        self.broken = True
        committing, self._committing = self._committing, None
        self._committing_batch = None
        if committing is not None:
            try:
                await committing
            except Exception:  # the crash came first: that commit may not have landed
                pass


def _rows(batch: Batch) -> int:
    """State rows a batch writes, task queue entries included (its appended events are
    counted apart)."""
    return (
        len(batch.instances)
        + len(batch.journal)
        + len(batch.waits)
        + len(batch.work)
        + len(batch.inbox)
        + len(batch.dead_letters)
        + len(batch.state)
        + len(batch.tasks)
    )
