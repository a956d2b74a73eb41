"""The engine: owns the log's partitions and turns inputs into committed state.

One iteration (``_iterate``) gathers a batch of inputs (log records, step and handler
outcomes, due work), runs the affected instances to quiescence, and commits everything it
changed (journals, instance rows, waits, work, emitted events, dead letters, and the log
offsets it consumed) in **one** ``Store.commit``. A crash anywhere before that commit loses
the whole iteration, which is then redone from the same offsets; nothing is half-applied.

Steps and handlers run outside this critical section (``Executor``); an async step that
finishes without suspending is folded into the same batch, saving a commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from .. import protocol
from ..app import App, ProcessDef
from ..binding import from_record
from ..codec import Codec
from ..core import machine as m
from ..core.correlation import WaitIndex
from ..core.timers import WorkQueue
from ..errors import ConfigError, EventError, MalformedEvent
from ..events import Envelope, Event
from ..ports import (
    Batch,
    DeadLetter,
    EngineBackend,
    InboxRow,
    InstanceRow,
    NewRecord,
    Record,
    WaitRow,
    Wire,
    WorkRow,
)
from . import gcpolicy
from .batch import Live, Outcome, PendingBatch
from .clock import Clock, SystemClock
from .executor import Executor
from .work import WorkRunner

_FOLD_ROUNDS_WAITING = 4
"""A batch waits for its sync calls at most this many times ``sync_fold`` in all."""

log = logging.getLogger("overture.engine")


class Engine(WorkRunner):
    """Runs an :class:`~overture.App` against a backend.

    Args:
        app: the application.
        backend: an open backend (``overture.backends.open_backend``).
        clock: time source (``VirtualClock`` in tests).
        cache_size: live instances kept in memory; 0 replays every instance on every
            input (used by the test suite to prove replay is faithful).
        batch_size: most log records taken per iteration (group commit size).
        group: consumer group name (defaults to the app name).
        partitions: the log partitions this engine consumes (default: all of them). An
            engine that owns only some re-keys an event whose key belongs to another
            partition: it forwards the event there (``NewRecord.internal``) instead of
            routing it, so every input of an instance is handled by its partition's engine.
        gc_threshold: while the engine runs, CPython's first garbage-collector threshold
            is raised to at least this (``runtime/gcpolicy.py``: the default 700 made
            full collections a third of the engine's CPU); None leaves it alone.
        threads: size of the pool that runs sync steps and handlers. It bounds how many
            run at once, so blocking steps bound throughput: with 16 threads and 10 ms of
            I/O per step, W1's three steps per instance cap it near 530 instances/s.
        sync_fold: seconds the engine may wait, after driving a batch, for the sync steps
            (and handlers) that batch started, so that their outcomes are applied in the
            same batch and commit (one batch per instance rather than one per step).
            It repeats while the outcomes so applied start new calls, each round
            waiting at most this long (ending as soon as all of its calls returned)
            and the batch at most four times this in all; a call still running then
            reports in a later batch (its work row is stored with this one). 0 or
            None: never wait.
        codec: turns records into events and back, and makes the typed events of
            live and replayed instances (default: ``Codec(app)``; see ``overture.codec``).
    """

    def __init__(
        self,
        app: App,
        backend: EngineBackend,
        *,
        clock: Clock | None = None,
        cache_size: int = 10_000,
        batch_size: int = 500,
        group: str | None = None,
        partitions: Sequence[int] | None = None,
        gc_threshold: int | None = 20_000,
        threads: int = 16,
        sync_fold: float | None = 0.002,
        codec: Codec | None = None,
    ) -> None:
        self.app = app
        self.codec = Codec(app) if codec is None else codec
        self.backend = backend
        self.clock: Clock = clock or SystemClock()
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.gc_threshold = gc_threshold
        self._restore_gc: Any = None
        self.group = group or f"engine:{app.name}"
        self.executor = Executor(threads)
        if sync_fold is not None and sync_fold < 0:
            raise ConfigError("sync_fold must be a number of seconds >= 0 (or None)")
        self.sync_fold = sync_fold or 0.0
        self._log = backend.log
        self._store = backend.store
        self._consumes = list(partitions) if partitions is not None else None
        # the key partitions this engine owns; None: all of them
        self._owned = (
            None
            if partitions is None
            else frozenset(p % backend.log.partitions for p in partitions)
        )
        self._cache: OrderedDict[str, Live] = OrderedDict()
        self._positions: dict[int, int] = {}
        self._outcomes: deque[Outcome] = deque()
        self._work = WorkQueue()
        self._inflight: set[str] = set()
        self._waits = WaitIndex()
        self._wait_types_checked: set[tuple[str, str]] = set()  # see _check_declared
        # running instances by key (lists: almost always one per key)
        self._active: dict[str | None, list[str]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._started = False
        self._broken = False
        self._grace = 5.0
        self._release_lock: Any = None
        self._unsubscribe: Any = None
        self._pending: PendingBatch | None = None
        self._dirty: dict[str, Live] = {}
        self._inline_budget = 0
        self._committing: asyncio.Future[None] | None = None
        self._committing_batch: Batch | None = None
        self._finished: list[str] = []
        self._first_partition = 0
        self._running = False
        self._stopped = asyncio.Event()
        self.stats = {
            "batches": 0,
            "records": 0,
            "started": 0,
            "finished": 0,
            "rekeyed": 0,
            "folded": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the backend and load the state needed to resume (waits, work, keys)."""
        self._release_lock = self.backend.engine_lock()
        try:
            committed = self._store.offsets(self.group)
            consumed = self._consumes
            if consumed is None:
                consumed = list(range(self._log.partitions))
            self._positions = {p: committed.get(p, 0) for p in consumed}
            self._waits = WaitIndex(self._store.waits())
            self._work = WorkQueue(self._store.work())
            for iid, key in self._store.active_instances():
                self._active.setdefault(key, []).append(iid)
        except BaseException:
            self._release_lock()
            raise
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self._unsubscribe = self._log.subscribe(wake)
        self._restore_gc = gcpolicy.raise_threshold(self.gc_threshold)
        self._started = True

    async def stop(self, grace: float = 5.0) -> None:
        """Drain: finish the current iteration, give running steps ``grace`` seconds,
        commit their outcomes, and release the backend. Unfinished steps keep their work
        rows and run again after a restart. An engine runs once: stopped, it stays so."""
        self._stopping = True
        if not self._started:
            return
        self._stopping = True
        self._grace = grace
        self._wake.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            await self.executor.shutdown(self._grace)
            if self._outcomes and not self._broken:
                await self._iterate(read_log=False)
            if not self._broken:
                await self._settle()
        finally:  # a failed last commit still lets go of the backend and the process
            for live in self._cache.values():
                live.machine.close()
            self._cache.clear()
            if self._unsubscribe is not None:
                self._unsubscribe()
            self._release_lock()
            self._restore_gc()
            self._started = False

    async def run(self) -> None:
        """Process inputs until :meth:`stop` is called."""
        if self._stopping:
            return  # stopped before it ran
        if not self._started:
            await self.start()
        self._running = True
        try:
            while not self._stopping:
                self._wake.clear()
                if await self._iterate():
                    continue
                await self._settle()
                self._evict()
                await self.clock.wait(self._wake, self._work.next_due(self._inflight))
        finally:
            self._stopping = True
            try:
                await self._shutdown()
            finally:  # stop() waits for this, even when the shutdown failed
                self._running = False
                self._stopped.set()

    async def run_until_idle(self, max_iterations: int = 100_000) -> None:
        """Process until nothing is left to do *now*: no unread records, no running
        steps, no due work. Timers in the future stay pending (advance the clock)."""
        if not self._started:
            await self.start()
        for _ in range(max_iterations):
            if await self._iterate():
                continue
            await self._settle()
            self._evict()
            if self._outcomes:  # reported while the last commit settled
                continue
            if self.executor.busy:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = self._work.next_due(self._inflight)
            if self._has_unread() or (due is not None and due <= self.clock.now()):
                continue
            return
        raise RuntimeError("engine did not become idle")

    # -- one iteration ---------------------------------------------------------------------

    async def _iterate(self, read_log: bool = True) -> bool:
        if self._broken:
            raise RuntimeError("the engine failed earlier; restart it")
        try:
            return await self._iterate_once(read_log)
        except BaseException:
            # Memory is now ahead of (or apart from) the store: never commit again from
            # this state. A restart rebuilds everything from the last good commit.
            self._broken = True
            raise

    async def _iterate_once(self, read_log: bool) -> bool:
        now = self.clock.now()
        # eager step results applied on the spot in this batch; the rest become outcomes
        self._inline_budget = self.batch_size * 4
        pending = self._pending = PendingBatch(self.group)
        self.executor.begin_round()
        did = False
        if read_log and not self._stopping:
            did = self._consume_log(now) or did
        did = self._take_due(now) or did
        # Outcomes include steps that finished eagerly while this batch was being built;
        # the budget bounds a process that loops over trivial steps forever.
        budget = self.batch_size * 4
        while self._outcomes and budget > 0:
            did = True
            budget -= 1
            self._apply_outcome(self._outcomes.popleft(), now)
        if not did:
            self._pending = None
            return False
        self._fold(budget, now)
        # Eager first attempts left over by the budget have no stored row yet: give them
        # one now, or a crash after this commit would leave their steps scheduled but never run.
        for outcome in self._outcomes:
            if not outcome.stored:
                self._store_eager(outcome, now)
        self._flush_instances(now)
        batch = pending.batch
        self._pending = None
        await self._settle()  # the previous batch is durable from here on
        self._evict(keep=batch.instances)
        if not batch.empty():
            self._start_commit(batch)
        self.stats["batches"] += 1
        return True

    def _fold(self, budget: int, now: float) -> None:
        """Apply in this batch the outcomes of the quick sync calls it started (see
        ``sync_fold``), within what is left of the batch's outcome ``budget``.

        Each round waits for the calls started since the previous one (applying an
        outcome usually starts the instance's next step): at most ``sync_fold`` per
        round, at most ``_FOLD_ROUNDS_WAITING`` times that per batch, so a slow call
        costs the batch one bounded wait, not one per round."""
        executor = self.executor
        limit = self.sync_fold
        if not limit:
            return
        clock = time.monotonic
        left = limit * _FOLD_ROUNDS_WAITING  # the batch's whole waiting allowance
        while left > 0 and budget > 0 and executor.round_started and not self._stopping:
            began = clock()
            executor.wait_round(min(limit, left))  # reports through done: self._outcomes
            left -= clock() - began
            executor.begin_round()  # count only what applying these outcomes starts
            while self._outcomes and budget > 0:
                budget -= 1
                self.stats["folded"] += 1
                self._apply_outcome(self._outcomes.popleft(), now)

    def _start_commit(self, batch: Batch) -> None:
        """Commit a batch. On a durable backend the commit (and its fsync) runs in a
        thread while the engine builds the next batch; that one commits only after this
        one has (``_settle``), so commits stay in order and the store is never ahead of
        a crash-consistent prefix."""
        if self.backend.capabilities.commit == "inline":
            self._store.commit(batch)
            return
        loop = asyncio.get_running_loop()
        self._committing = loop.run_in_executor(None, self._store.commit, batch)
        self._committing_batch = batch

    async def _settle(self) -> None:
        """Wait for the batch being committed, if any."""
        committing = self._committing
        if committing is None:
            return
        self._committing = None
        try:
            await committing
        except BaseException:
            self._broken = True
            raise
        finally:
            self._committing_batch = None

    def _uncommitted(self) -> list[Batch]:
        """Batches whose changes readers of the store cannot see yet."""
        pending = [] if self._pending is None else [self._pending.batch]
        return pending + ([] if self._committing_batch is None else [self._committing_batch])

    def _consume_log(self, now: float) -> bool:
        budget = self.batch_size
        did = False
        parts = list(self._positions)
        # rotate the starting partition so a busy partition cannot starve the others
        self._first_partition = (self._first_partition + 1) % len(parts)
        for part in parts[self._first_partition :] + parts[: self._first_partition]:
            if budget <= 0:
                break
            pos = self._positions[part]
            records = self._log.read(part, pos, budget)
            if not records:
                continue
            did = True
            budget -= len(records)
            envelopes = [self._decode(record) for record in records]
            self._prefetch(envelopes)
            for record, envelope in zip(records, envelopes, strict=True):
                self._route(record, now, envelope)
            self._positions[part] = records[-1].offset + 1
            assert self._pending is not None
            self._pending.batch.offsets[part] = self._positions[part]
            self.stats["records"] += len(records)
        return did

    def _has_unread(self) -> bool:
        return any(self._log.end_offset(p) > pos for p, pos in self._positions.items())

    # -- routing events ----------------------------------------------------------------------

    def _decode(self, record: Record) -> Envelope | MalformedEvent:
        if record.error is not None:  # the log could not make an event of what arrived
            return MalformedEvent(record.error)
        try:
            return self.codec.from_bytes(record.value)
        except MalformedEvent as error:
            return error

    def _prefetch(self, envelopes: list[Envelope | MalformedEvent]) -> None:
        """Read in bulk what routing these records will need from the store: which of
        their triggers already started an instance (a re-delivery), and the state of the
        evicted instances they will feed, instead of a few queries per record."""
        pending = self._pending
        assert pending is not None
        wanted: set[str] = set()
        for envelope in envelopes:
            if isinstance(envelope, Envelope):
                for definition in self.app.triggers(envelope.type):
                    ids = m.trigger_instance_ids(definition.name, envelope)
                    pending.trigger_ids[(definition.name, envelope.source, envelope.id)] = ids
                for wait in self._waits.match(envelope.type, envelope.partitionkey):
                    wanted.add(wait.instance_id)
        candidates = [
            i for ids in pending.trigger_ids.values() for i in ids if i not in self._cache
        ]
        if candidates:
            pending.existing |= self._store.existing(candidates)
        self._read_ahead(wanted)

    def _route(
        self, record: Record, now: float, decoded: Envelope | MalformedEvent | None = None
    ) -> None:
        envelope = self._decode(record) if decoded is None else decoded
        if isinstance(envelope, MalformedEvent):
            self._dead_letter(
                f"{record.partition}:{record.offset}", "decode", str(envelope), None, record, now
            )
            return
        if protocol.is_reserved(envelope.type):
            self._control(envelope, record, now)
            return
        key = envelope.partitionkey
        if self._foreign(key):
            # keyed for another partition (a producer keyed or partitioned it differently):
            # forward it there, atomically with this batch's offsets
            assert self._pending is not None
            self._pending.batch.appends.append(
                NewRecord(key, record.value, None, envelope.type, internal=True, wire=record.wire)
            )
            self.stats["rekeyed"] += 1
            return
        # Types with a registered contract are validated here (invalid → dead letter);
        # other types become generic events, whose data may be any JSON. An event that
        # starts one process is decoded from a private copy of its data: that decoded
        # event becomes the instance's own, saving the instance a second decode.
        triggers = self.app.triggers(envelope.type)
        sole = len(triggers) == 1
        try:
            event = self.codec.event(m.private_copy(envelope) if sole else envelope)
        except EventError as error:
            self._dead_letter(
                f"{record.partition}:{record.offset}", "validate", str(error), envelope, record, now
            )
            return
        # Every key first (user code that may fail), so that an event is either routed
        # whole or dead-lettered whole, never half-applied.
        keys = []
        for definition in triggers:
            try:
                keys.append((definition, definition.key_of(event)))
            except Exception as error:
                self._dead_letter(
                    f"{record.partition}:{record.offset}",
                    "route",
                    f"key of process {definition.name!r} failed: {error!r}",
                    envelope,
                    record,
                    now,
                )
                return
        started = {
            self._start_instance(
                definition,
                key,
                envelope,
                record.partition % self._log.partitions,
                now,
                event if sole and type(event) is definition.spec.event_class else None,
            )
            for definition, key in keys
        }
        for handler in self.app.handlers(envelope.type):
            self._schedule_handler(handler, envelope, record.value, now)
        self._correlate(envelope, record, now, started)

    def _correlate(self, envelope: Envelope, record: Record, now: float, started: set[str]) -> None:
        """Feed every instance waiting on (type, key); buffer the event for the other
        running instances with that key (they may be about to wait for it)."""
        fed = set(started)
        value: dict[str, Any] | None = None
        for wait in self._waits.match(envelope.type, envelope.partitionkey):
            if wait.home is not None:  # for an instance of another partition
                self._forward(wait, envelope)
                continue
            iid = wait.instance_id
            live = self._live(iid, now, stuck=True)
            if live is not None and live.machine.stuck_reason is not None:
                # parked: keep both the wait and the event for when the code is fixed
                if iid not in fed:
                    fed.add(iid)
                    self._buffer(iid, envelope, record.value, _position(record), now)
                continue
            self._clear_wait(wait)
            if live is not None:
                fed.add(iid)
                # shared by the waiters' journal entries; each waiter's code gets a copy
                value = value or self.codec.to_journal(envelope)
                self._drive(live, live.machine.resolve(wait.seq, now, ok=value), now)
        if envelope.partitionkey is None:
            return  # keyless events are never buffered: they would reach every keyless instance
        for iid in list(self._active.get(envelope.partitionkey, ())):
            if iid not in fed and not envelope.source.endswith("/" + iid):  # not its emitter
                self._buffer(iid, envelope, record.value, _position(record), now)

    def _buffer(
        self, iid: str, envelope: Envelope, value: bytes, position: str, now: float
    ) -> None:
        # The id carries the log position, so buffered events come back in log order.
        row = InboxRow(f"{iid}:{position}", iid, envelope.type, envelope.partitionkey, value, now)
        assert self._pending is not None
        self._pending.inbox.put(row.id, row, created=True)
        cached = self._cache.get(iid)
        if cached is not None:
            cached.inbox.append(row)

    def _control(self, envelope: Envelope, record: Record, now: float) -> None:
        """Carry out a control event; one that is not valid is dead-lettered, like any
        other input that cannot be used (raising here would stop the partition on the
        same record at every restart)."""
        try:
            message = protocol.parse_control(envelope.type, envelope.data)
            if self._remote_control(message, envelope, now):
                return
        except EventError as error:
            self._dead_letter(
                f"{record.partition}:{record.offset}", "route", str(error), envelope, record, now
            )
            return
        if isinstance(message, protocol.Cancel):
            live = self._live(message.instance_id, now, stuck=True)
            if live is not None:
                self._drive(live, live.machine.cancel(now), now)
        elif isinstance(message, protocol.DlqReplay):
            self._replay_dead_letter(message.id, now)

    # -- instances --------------------------------------------------------------------------

    def _start_instance(
        self,
        definition: ProcessDef,
        key: str | None,
        envelope: Envelope,
        partition: int,
        now: float,
        event: Event | None = None,
    ) -> str:
        """Start the instance ``envelope`` triggers, unless it exists. ``event``: the
        trigger decoded for this instance alone (see ``Machine.start``)."""
        pending = self._pending
        assert pending is not None
        ids = pending.trigger_ids.get((definition.name, envelope.source, envelope.id))
        if ids is None:  # not prefetched (a dead letter routed again)
            ids = m.trigger_instance_ids(definition.name, envelope)
            pending.existing |= self._store.existing(ids)
        # The same trigger event never starts two instances; one started before the id
        # stopped depending on the trigger's time has the legacy id.
        for known in ids:
            if (
                known in self._cache
                or known in pending.batch.instances
                or known in pending.existing
            ):
                return known
        iid = ids[0]
        machine = m.Machine(definition.spec, iid, key, keep_journal=False, codec=self.codec)
        row = InstanceRow(
            iid,
            definition.name,
            definition.version,
            key,
            m.RUNNING,
            partition,
            now,
            now,
            envelope.id,
        )
        live = Live(machine, row)
        self._cache[iid] = live
        self._active.setdefault(key, []).append(iid)
        self.stats["started"] += 1
        self._drive(live, machine.start(envelope, now, event), now)
        return iid

    def _live(self, iid: str, now: float, *, stuck: bool = False) -> Live | None:
        """The cached instance, or its replay from the store.

        None if unknown or final; also None if stuck, unless ``stuck`` is true. A stuck
        instance keeps its waits, timers and work rows, so that after the code is fixed
        and the engine restarted, it resumes where it was parked.
        """
        live = self._cache.get(iid)
        if live is None:
            live = self._load(iid, now)
        else:
            self._cache.move_to_end(iid)
        if live is None or live.machine.final:
            return None
        if live.machine.stuck_reason is not None and not stuck:
            return None
        return live

    def _load(self, iid: str, now: float) -> Live | None:
        """Rebuild an instance that is not in the cache by replaying its journal."""
        assert self._pending is not None
        snapshot = self._pending.snapshots.pop(iid, None)
        if snapshot is None:  # not read ahead
            snapshot = self._store.snapshots([iid]).get(iid)
        if snapshot is None or snapshot.row.status in m.FINAL_STATUSES:
            return None
        row = snapshot.row
        definition = self.app.definition(row.process, row.version)
        if definition is None:
            spec = m.ProcessSpec(row.process, row.version, _missing, Event, self.app.name)
            machine = m.Machine(spec, iid, row.key, codec=self.codec)
            machine.status = m.STUCK
            machine.stuck_reason = (
                f"process {row.process!r} version {row.version} is not registered in this app"
            )
            live = self._cache[iid] = Live(machine, row)
            self._dirty[iid] = live
            return live
        machine = m.Machine(definition.spec, iid, row.key, keep_journal=False, codec=self.codec)
        commands = machine.replay(snapshot.journal)
        inbox = list(snapshot.inbox)
        for batch in reversed(self._uncommitted()):  # oldest first
            for inbox_id, r in batch.inbox.items():
                if r is None:
                    inbox = [b for b in inbox if b.id != inbox_id]
                elif r.instance_id == iid and r not in inbox:
                    inbox.append(r)
        live = Live(machine, row, inbox)
        self._cache[iid] = live
        if machine.stuck_reason is not None:
            self._dirty[iid] = live
            return live
        if commands:
            self._drive(live, commands, now)
        # Events buffered while the instance was parked (stuck) feed the waits it kept.
        for wait in self._waits.of_instance(iid):
            value = self._take_buffered(live, wait.event_type, wait.key)
            if value is not None:
                self._clear_wait(wait)
                self._drive(live, machine.resolve(wait.seq, now, ok=value), now)
        return live

    def _take_buffered(self, live: Live, event_type: str, key: str | None) -> dict[str, Any] | None:
        """Remove and return the oldest buffered event of that type and key, if any."""
        for buffered in live.inbox:
            if buffered.event_type == event_type and buffered.key == key:
                live.inbox.remove(buffered)
                assert self._pending is not None
                self._pending.inbox.delete(buffered.id)
                return self.codec.to_journal(self.codec.from_bytes(buffered.value))
        return None

    def _drive(self, live: Live, commands: Iterable[m.Command], now: float) -> None:
        """Carry out the commands an instance issued."""
        self._dirty[live.machine.instance_id] = live
        pending = self._pending
        assert pending is not None
        machine = live.machine
        iid = machine.instance_id
        # A worklist, not recursion: a step applied at once yields the next commands.
        todo = list(commands)
        while todo:
            command = todo.pop(0)
            if isinstance(command, m.ScheduleStep):
                done, value = self._start_step(command.call, now)
                if done:
                    todo.extend(machine.resolve(command.call.seq, now, ok=value))
            elif isinstance(command, m.StartTimer):
                row = WorkRow(f"{iid}:{command.seq}", "timer", command.due, 1, iid, command.seq)
                self._put_work(row)
            elif isinstance(command, m.StartWait):
                self._start_wait(live, command, now)
            elif isinstance(command, m.EmitEvent):
                env = command.envelope
                pending.batch.appends.append(
                    NewRecord(env.partitionkey, self.codec.to_bytes(env), env.id, env.type)
                )
            elif isinstance(command, m.Finished):
                self._cleanup(live)

    def _start_wait(self, live: Live, command: m.StartWait, now: float) -> None:
        pending = self._pending
        assert pending is not None
        iid = live.machine.instance_id
        value = self._take_buffered(live, command.event_type, command.key)
        if value is not None:
            self._drive(live, live.machine.resolve(command.seq, now, ok=value), now)
            return
        self._check_declared(live.row.process, command.event_type)
        wait = WaitRow(command.event_type, command.key, iid, command.seq)
        pending.waits.put(wait, True, created=True)
        self._waits.add(wait)
        if self._foreign(command.key):
            self._subscribe_remote(wait, live.row.partition)
        if command.due is not None:
            row = WorkRow(f"{iid}:{command.seq}", "timer", command.due, 1, iid, command.seq)
            self._put_work(row)

    def _check_declared(self, process: str, event_type: str) -> None:
        """Warn once per (process, type) about a wait its process did not declare in
        ``waits=``: clients with the app then neither validate such events nor derive
        their key, so a payment sent without ``--key`` would silently never arrive."""
        if (process, event_type) in self._wait_types_checked:
            return
        self._wait_types_checked.add((process, event_type))
        if process not in self.app.waiters(event_type):
            log.warning(
                "process %r waits for %r without declaring it: add it to "
                "@app.process(waits=[...]) so that clients with the app (overture send "
                "--app) validate such events and derive their key",
                process,
                event_type,
            )

    def _cleanup(self, live: Live) -> None:
        """An instance finished: drop its waits, work and buffered events."""
        pending = self._pending
        assert pending is not None
        iid = live.machine.instance_id
        for wait in self._waits.of_instance(iid):
            self._clear_wait(wait)
        for work_id in self._work.of_instance(iid):
            self._clear_work(work_id)
        for buffered in live.inbox:
            pending.inbox.delete(buffered.id)
        live.inbox.clear()
        self._deactivate(live.row.key, iid)
        self._finished.append(iid)
        self.stats["finished"] += 1

    def _flush_instances(self, now: float) -> None:
        pending = self._pending
        assert pending is not None
        dirty, self._dirty = self._dirty, {}
        updated = self.clock.now()  # after the steps this batch ran
        for iid, live in dirty.items():
            machine, row = live.machine, live.row
            entries = machine.take_entries()
            if entries:
                pending.batch.journal.append((iid, row.journal_len, entries))
                row.journal_len += len(entries)
            row.status = machine.status
            row.updated = updated
            row.result = machine.result
            row.error = (
                machine.error
                if machine.stuck_reason is None
                else {"type": "NonDeterminismError", "message": machine.stuck_reason}
            )
            # a copy: the live row changes again while this batch is being committed
            pending.batch.instances[iid] = InstanceRow(
                row.id,
                row.process,
                row.version,
                row.key,
                row.status,
                row.partition,
                row.created,
                row.updated,
                row.trigger_id,
                row.result,
                row.error,
                row.journal_len,
            )
            if machine.stuck_reason is not None:
                self._deactivate(row.key, iid)

    def _deactivate(self, key: str | None, iid: str) -> None:
        keyed = self._active.get(key)
        if keyed is not None and iid in keyed:
            keyed.remove(iid)
            if not keyed:
                del self._active[key]

    def _evict(self, keep: Collection[str] = ()) -> None:
        """Drop finished instances and shrink the cache to its size, sparing ``keep``:
        instances whose latest state is not committed yet (a reload would miss it)."""
        finished, self._finished = self._finished, []
        for iid in finished:
            if iid in keep:
                self._finished.append(iid)
                continue
            live = self._cache.pop(iid, None)
            if live is not None:
                live.machine.close()
        spared: list[tuple[str, Live]] = []
        while len(self._cache) > self.cache_size:
            iid, live = self._cache.popitem(last=False)
            if iid in keep:
                spared.append((iid, live))
            else:
                live.machine.close()
        for iid, live in spared:
            self._cache[iid] = live

    # -- work: steps, timers, handlers -----------------------------------------------------------

    def _dead_letter(
        self,
        dl_id: str,
        source: str,
        reason: str,
        envelope: Envelope | None,
        record: Record | None,
        now: float,
        *,
        payload: bytes | None = None,
        attempts: int = 0,
    ) -> None:
        assert self._pending is not None
        if envelope is None and payload is not None:
            try:
                envelope = self.codec.from_bytes(payload)
            except MalformedEvent:
                envelope = None
        value = record.value if record is not None else (payload or b"")
        wire = record.wire if record is not None else None
        if wire is not None:  # keep the record as it arrived, not its structured form
            value = wire.value or b""
        letter = DeadLetter(
            dl_id,
            now,
            reason,
            attempts,
            source,
            envelope.type if envelope else None,
            envelope.partitionkey if envelope else (record.key if record else None),
            value,
            record.partition if record else None,
            record.offset if record else None,
            None if wire is None else wire.key,
            None if wire is None else wire.headers,
        )
        self._pending.batch.dead_letters[dl_id] = letter
        log.warning("dead-lettered %s (%s): %s", dl_id, source, reason)

    def _dead_letter_row(self, dl_id: str) -> DeadLetter | None:
        for batch in self._uncommitted():  # newest first
            if dl_id in batch.dead_letters:
                return batch.dead_letters[dl_id]
        return self._store.dead_letter(dl_id)

    def _replay_dead_letter(self, dl_id: str, now: float) -> None:
        assert self._pending is not None
        letter = self._dead_letter_row(dl_id)
        if letter is None:
            log.warning("dlq replay: no dead letter %s", dl_id)
            return
        self._pending.batch.dead_letters[dl_id] = None
        if letter.source.startswith("handler:"):
            handler = self.app.handler(letter.source.removeprefix("handler:"))
            if handler is None:
                self._dead_letter(
                    dl_id,
                    letter.source,
                    "handler is not registered",
                    None,
                    None,
                    now,
                    payload=letter.value,
                    attempts=letter.attempts,
                )
                return
            row = WorkRow(dl_id, "handler", now, 1, None, None, handler.name, letter.value)
            self._put_work(row, start_now=True)
        else:
            self._route(_record_of(letter, now), now)


def _record_of(letter: DeadLetter, now: float) -> Record:
    """The record a dead letter was made of, read again: one kept as it arrived on Kafka
    (``headers`` set) goes through the CloudEvents binding again, so a replay sees what
    a fresh delivery of those bytes would."""
    partition, offset = letter.partition or 0, letter.offset or 0
    if letter.headers is None:
        return Record(partition, offset, letter.key, letter.value, now)
    wire = Wire(letter.raw_key, letter.headers, letter.value)
    read = from_record(wire.key, wire.headers, wire.value)
    return Record(partition, offset, read.key, read.value, now, wire, read.error)


def _position(record: Record) -> str:
    return f"{record.partition:05d}:{record.offset:012d}"


async def _missing(ctx: Any, event: Any) -> None:  # placeholder fn of an unregistered version
    raise RuntimeError("unreachable: instances of unregistered versions are parked as stuck")
