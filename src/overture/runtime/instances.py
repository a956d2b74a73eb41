"""The live instances: the cache, the running instances by key, and what the runtime
does to an instance (start, replay, drive its commands, apply its step outcomes and
timers, flush it to rows, evict it; task results: ``runtime/tasks.py``).

An instance is cached (LRU, ``cache_size``) as a :class:`~.staging.Live`; one that is not
is rebuilt by replaying its journal (``Machine.replay``) the next time an input reaches
it. Every change is staged in the batch passed in (``Stage``) and its instance marked
dirty there; ``flush`` turns the dirty instances into the batch's journal chunks and
instance rows just before the commit.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from ..app import App, ProcessDef
from ..codec import Codec
from ..core import machine as m
from ..core.values import describe_error, to_json
from ..events import Envelope, Event
from ..ports import Batch, InboxRow, InstanceRow, NewRecord, Store, WaitRow, WorkRow
from .executor import PROCESS_FIELD
from .observer import Observer
from .staging import Live, Outcome, Stage
from .waits import Waits
from .work import Work

if TYPE_CHECKING:
    from .tasks import Attempts

log = logging.getLogger("overture.engine")


class Instances:
    """The engine's instances (see the module docstring).

    Args:
        app: the application (process definitions by name and version).
        store: where evicted instances are read back from.
        cache_size: live instances kept in memory (0: replay on every input).
        work: steps and timers the instances schedule.
        attempts: publishes the remote tasks they call.
        waits: the waits they start and end.
        in_flight: the batch being committed, if any (its inbox rows are not readable
            from the store yet).
        observer: told of instances started, finished, parked, and of timers fired.
        stats: the engine's counters (``started``, ``finished``).
    """

    def __init__(
        self,
        app: App,
        codec: Codec,
        store: Store,
        cache_size: int,
        work: Work,
        attempts: Attempts,
        waits: Waits,
        in_flight: Callable[[], Batch | None],
        observer: Observer,
        stats: dict[str, int],
    ) -> None:
        self._app = app
        self._codec = codec
        self._store = store
        self._cache_size = cache_size
        self._work = work
        self._attempts = attempts
        self._waits = waits
        self._in_flight = in_flight
        self._observer = observer
        self._traces = observer.traces
        self._stats = stats
        self._cache: OrderedDict[str, Live] = OrderedDict()
        # running instances by key (lists: almost always one per key)
        self._active: dict[str | None, list[str]] = {}
        self._finished: list[str] = []  # to drop from the cache once committed
        self._wait_types_checked: set[tuple[str, str]] = set()  # see _check_declared

    # -- queries -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cache)

    def not_cached(self, instance_ids: Iterable[str]) -> list[str]:
        """Those of ``instance_ids`` that are not in the cache."""
        cache = self._cache
        return [i for i in instance_ids if i not in cache]

    def active(self, key: str) -> list[str]:
        """The running instances with this key (a copy)."""
        return list(self._active.get(key, ()))

    def load_active(self, rows: Iterable[tuple[str, str | None]]) -> None:
        """Index the running instances by key (at start: ``Store.active_instances``)."""
        for iid, key in rows:
            self._active.setdefault(key, []).append(iid)

    # -- start, load -------------------------------------------------------------------

    def start(
        self,
        stage: Stage,
        definition: ProcessDef,
        key: str | None,
        envelope: Envelope,
        partition: int,
        now: float,
        event: Event | None = None,
    ) -> str:
        """Start the instance ``envelope`` triggers, unless it exists. ``event``: the
        trigger decoded for this instance alone (see ``Machine.start``)."""
        ids = stage.trigger_ids.get((definition.name, envelope.source, envelope.id))
        if ids is None:  # not prefetched (a dead letter routed again)
            ids = m.trigger_instance_ids(definition.name, envelope)
            stage.existing |= self._store.existing(ids)
        # The same trigger event never starts two instances; one started before the id
        # stopped depending on the trigger's time has the legacy id.
        for known in ids:
            if known in self._cache or known in stage.batch.instances or known in stage.existing:
                return known
        iid = ids[0]
        machine = m.Machine(definition.spec, iid, key, keep_journal=False, codec=self._codec)
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
        self._stats["started"] += 1
        self._observer.instance_started(iid, definition.name)
        self.drive(stage, live, machine.start(envelope, now, event), now)
        return iid

    def read_ahead(self, stage: Stage, instance_ids: Iterable[str]) -> None:
        """Read the evicted ones among these instances in bulk (three queries for all of
        them rather than three each), for ``live`` to rebuild them from."""
        wanted = [i for i in instance_ids if i not in self._cache]
        if wanted:
            stage.snapshots.update(self._store.snapshots(wanted))

    def live(self, stage: Stage, iid: str, now: float, *, stuck: bool = False) -> Live | None:
        """The cached instance, or its replay from the store.

        None if unknown or final; also None if stuck, unless ``stuck`` is true. A stuck
        instance keeps its waits, timers and work rows, so that after the code is fixed
        and the engine restarted, it resumes where it was parked.
        """
        live = self._cache.get(iid)
        if live is None:
            live = self._load(stage, iid, now)
        else:
            self._cache.move_to_end(iid)
            self._observer.instance_loaded(iid, live.row.process, None)
        if live is None or live.machine.final:
            return None
        if live.machine.stuck_reason is not None and not stuck:
            return None
        return live

    def _load(self, stage: Stage, iid: str, now: float) -> Live | None:
        """Rebuild an instance that is not in the cache by replaying its journal."""
        snapshot = stage.snapshots.pop(iid, None)
        if snapshot is None:  # not read ahead
            snapshot = self._store.snapshots([iid]).get(iid)
        if snapshot is None or snapshot.row.status in m.FINAL_STATUSES:
            return None
        row = snapshot.row
        definition = self._app.definition(row.process, row.version)
        if definition is None:
            spec = m.ProcessSpec(row.process, row.version, _unregistered, Event, self._app.name)
            machine = m.Machine(spec, iid, row.key, codec=self._codec)
            machine.park(
                f"process {row.process!r} version {row.version} is not registered in this app"
            )
            live = self._cache[iid] = Live(machine, row)
            stage.dirty[iid] = live
            return live
        machine = m.Machine(definition.spec, iid, row.key, keep_journal=False, codec=self._codec)
        commands = machine.replay(snapshot.journal)
        self._observer.instance_loaded(iid, row.process, len(snapshot.journal))
        inbox = list(snapshot.inbox)
        for batch in (self._in_flight(), stage.batch):  # oldest first
            if batch is None:
                continue
            for inbox_id, r in batch.inbox.items():
                if r is None:
                    inbox = [b for b in inbox if b.id != inbox_id]
                elif r.instance_id == iid and r not in inbox:
                    inbox.append(r)
        live = Live(machine, row, inbox)
        self._cache[iid] = live
        if machine.stuck_reason is not None:
            stage.dirty[iid] = live
            return live
        if commands:
            self.drive(stage, live, commands, now)
        # Events buffered while the instance was parked (stuck) feed the waits it kept.
        for wait in self._waits.of_instance(iid):
            value = self._take_buffered(stage, live, wait.event_type, wait.key)
            if value is not None:
                self._waits.clear(stage, wait)
                self.drive(stage, live, machine.resolve(wait.seq, now, ok=value), now)
        return live

    # -- events for instances ----------------------------------------------------------

    def buffer(
        self, stage: Stage, iid: str, envelope: Envelope, value: bytes, position: str, now: float
    ) -> None:
        """Keep an event for a running instance that may be about to wait for it."""
        # The id carries the log position, so buffered events come back in log order.
        row = InboxRow(f"{iid}:{position}", iid, envelope.type, envelope.partitionkey, value, now)
        stage.inbox.put(row.id, row, created=True)
        cached = self._cache.get(iid)
        if cached is not None:
            cached.inbox.append(row)

    def _take_buffered(
        self, stage: Stage, live: Live, event_type: str, key: str | None
    ) -> dict[str, Any] | None:
        """Remove and return the oldest buffered event of that type and key, if any."""
        for buffered in live.inbox:
            if buffered.event_type == event_type and buffered.key == key:
                live.inbox.remove(buffered)
                stage.inbox.delete(buffered.id)
                return self._codec.to_journal(self._codec.from_bytes(buffered.value))
        return None

    def resolve_wait(
        self, stage: Stage, live: Live, wait: WaitRow, value: dict[str, Any], now: float
    ) -> None:
        """An event resolves a wait of ``live``."""
        self.drive(stage, live, live.machine.resolve(wait.seq, now, ok=value), now)

    def deliver(self, stage: Stage, wait: WaitRow, event: Envelope, now: float) -> None:
        """An event another partition forwarded for one of our waits."""
        live = self.live(stage, wait.instance_id, now, stuck=True)
        if live is None:
            return
        if live.machine.stuck_reason is not None:
            self.buffer(
                stage, wait.instance_id, event, self._codec.to_bytes(event), f"r:{event.id}", now
            )
            return  # parked: the wait stays, and the event waits with it
        self._waits.clear(stage, wait, withdraw=False)
        self.resolve_wait(stage, live, wait, self._codec.to_journal(event), now)

    def cancel(self, stage: Stage, iid: str, now: float) -> bool:
        """Cancel a running (or parked) instance. False if this engine holds no such
        instance, not even a finished one: the cancel named a wrong id, or reached a
        partition other than the instance's (on Kafka, where each engine holds only its
        own partitions' instances)."""
        live = self.live(stage, iid, now, stuck=True)
        if live is not None:
            self.drive(stage, live, live.machine.cancel(now), now)
            return True
        return self.holds(iid)

    def holds(self, iid: str) -> bool:
        """Whether this engine holds the instance, finished or not (on Kafka an engine
        holds only the instances of its own partitions)."""
        return iid in self._cache or self._store.instance(iid) is not None

    # -- commands ----------------------------------------------------------------------

    def drive(self, stage: Stage, live: Live, commands: Iterable[m.Command], now: float) -> None:
        """Carry out the commands an instance issued."""
        stage.dirty[live.machine.instance_id] = live
        machine = live.machine
        iid = machine.instance_id
        traces = self._traces
        if traces:
            self._observer.segment_resumed(iid, live.row.process, live.row.version, machine.trace)
        # A worklist, not recursion: a step applied at once yields the next commands.
        todo = list(commands)
        while todo:
            command = todo.pop(0)
            if isinstance(command, m.ScheduleStep | m.ScheduleTask) and _abandoned(
                machine, command, todo
            ):
                # abandoned before it started (in the same stretch of code): started now,
                # a step's function would run for an operation the code had given up
                continue
            if isinstance(command, m.ScheduleStep):
                done, value = self._work.start_step(
                    stage, command.call, now, process=live.row.process
                )
                if done:
                    todo.extend(machine.resolve(command.call.seq, now, ok=value))
            elif isinstance(command, m.ScheduleTask):
                self._attempts.publish(stage, live.row, command.call, 1, now)
            elif isinstance(command, m.StartTimer):
                row = WorkRow(f"{iid}:{command.seq}", "timer", command.due, 1, iid, command.seq)
                self._work.put(stage, row)
            elif isinstance(command, m.StartWait):
                self._start_wait(stage, live, command, now)
            elif isinstance(command, m.EmitEvent):
                env = command.envelope
                stage.batch.appends.append(
                    NewRecord(env.partitionkey, self._codec.to_bytes(env), env.id, env.type)
                )
                if traces:
                    self._observer.emitted(iid, env)
            elif isinstance(command, m.Abandon):
                self._abandon(stage, iid, command.seq)
            elif isinstance(command, m.Finished):
                self._cleanup(stage, live)

    def _start_wait(self, stage: Stage, live: Live, command: m.StartWait, now: float) -> None:
        iid = live.machine.instance_id
        value = self._take_buffered(stage, live, command.event_type, command.key)
        if value is not None:
            self.drive(stage, live, live.machine.resolve(command.seq, now, ok=value), now)
            return
        self._check_declared(live.row.process, command.event_type)
        self._waits.add(
            stage, WaitRow(command.event_type, command.key, iid, command.seq), live.row.partition
        )
        if command.due is not None:
            row = WorkRow(f"{iid}:{command.seq}", "timer", command.due, 1, iid, command.seq)
            self._work.put(stage, row)

    def _check_declared(self, process: str, event_type: str) -> None:
        """Warn once per (process, type) about a wait its process did not declare in
        ``waits=``: clients with the app then neither validate such events nor derive
        their key, so a payment sent without ``--key`` would silently never arrive."""
        if (process, event_type) in self._wait_types_checked:
            return
        self._wait_types_checked.add((process, event_type))
        if process not in self._app.waiters(event_type):
            log.warning(
                "process %r waits for %r without declaring it: add it to "
                "@app.process(waits=[...]) so that clients with the app (overture send "
                "--app) validate such events and derive their key",
                process,
                event_type,
                extra={PROCESS_FIELD: process},
            )

    def _abandon(self, stage: Stage, iid: str, seq: int) -> None:
        """The code abandoned operation ``seq``: its wait and its work row (a step's, a
        timer's, a task call's, whose open attempt ``Work.clear`` ends) go."""
        for wait in self._waits.of_instance(iid):
            if wait.seq == seq:
                self._waits.clear(stage, wait)
        work_id = f"{iid}:{seq}"
        if self._work.get(work_id) is not None:
            self._work.clear(stage, work_id)

    def _cleanup(self, stage: Stage, live: Live) -> None:
        """An instance finished: drop its waits, work and buffered events."""
        iid = live.machine.instance_id
        for wait in self._waits.of_instance(iid):
            self._waits.clear(stage, wait)
        for work_id in self._work.of_instance(iid):
            self._work.clear(stage, work_id)
        for buffered in live.inbox:
            stage.inbox.delete(buffered.id)
        live.inbox.clear()
        self._deactivate(live.row.key, iid)
        self._finished.append(iid)
        self._stats["finished"] += 1
        self._observer.instance_finished(iid, live.row.process, live.machine.status)

    # -- work of instances: timers, step attempts and outcomes -------------------------

    def fire_timer(self, stage: Stage, row: WorkRow, now: float) -> None:
        """A durable timer is due: a sleep ends, or a wait times out."""
        assert row.instance_id is not None and row.seq is not None  # a timer row's
        live = self.live(stage, row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            return  # parked: the timer stays stored and fires after a fixed restart
        self._work.clear(stage, row.id)
        if live is None:
            return
        self._observer.timer_fired(row.instance_id, now - row.due)
        machine = live.machine
        wait = machine.pending_wait(row.seq)
        if wait is not None:
            for candidate in self._waits.of_instance(row.instance_id):
                if candidate.seq == row.seq:
                    self._waits.clear(stage, candidate)
            error = {"type": "WaitTimeout", "message": f"no {wait[0]!r} with key {wait[1]!r}"}
            self.drive(stage, live, machine.resolve(row.seq, now, err=error), now)
        else:
            self.drive(stage, live, machine.resolve(row.seq, now, ok=None), now)

    def run_step(self, stage: Stage, row: WorkRow, now: float) -> None:
        """Start an attempt of a stored step row that is due."""
        if not self._work.may_start(row):
            return
        assert row.instance_id is not None and row.seq is not None  # a step row's
        live = self.live(stage, row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            return  # parked: the step runs again once the code is fixed
        call = None if live is None else live.machine.pending_step(row.seq)
        if live is None or call is None:
            self._work.clear(stage, row.id)
            return
        live.backoff.discard(row.seq)
        if self._traces:  # a retry, or a step run again after a restart: in a segment
            self._observer.segment_resumed(
                row.instance_id, live.row.process, live.row.version, live.machine.trace
            )
            stage.dirty[row.instance_id] = live  # so that its segment_flushed comes
        self._work.attempt_step(row, call, process=live.row.process)

    def store_eager(self, stage: Stage, outcome: Outcome, now: float) -> None:
        """Give a reported eager first attempt its stored row (see ``Work.store_eager``)."""
        iid, _, seq = outcome.work_id.rpartition(":")
        live = self._cache.get(iid)
        call = None if live is None else live.machine.pending_step(int(seq))
        if call is not None:
            self._work.store_eager(stage, outcome, call, now)

    def step_outcome(self, stage: Stage, outcome: Outcome, row: WorkRow | None, now: float) -> None:
        """Apply a step attempt's outcome: ``row`` is its current work row (None for an
        eager first attempt that never got one)."""
        if row is None:
            iid, _, seq = outcome.work_id.rpartition(":")
            live = self.live(stage, iid, now)
            if live is not None and live.machine.pending_step(int(seq)) is not None:
                self.drive(stage, live, live.machine.resolve(int(seq), now, ok=outcome.value), now)
            return
        assert row.instance_id is not None and row.seq is not None  # a step row's
        live = self.live(stage, row.instance_id, now, stuck=True)
        if live is not None and live.machine.stuck_reason is not None:
            return  # parked: the outcome is dropped; the step runs again after a fix
        call = None if live is None else live.machine.pending_step(row.seq)
        if live is None or call is None:
            self._work.clear(stage, row.id)
            return
        if outcome.ok:
            try:
                value = to_json(outcome.value)
            except Exception as exc:
                outcome = Outcome(
                    row.id,
                    row.attempt,
                    False,
                    TypeError(f"step result is not JSON-serializable: {exc}"),
                )
            else:
                self._work.clear(stage, row.id)
                self.drive(stage, live, live.machine.resolve(row.seq, now, ok=value), now)
                return
        error = outcome.value
        described = describe_error(error)
        if call.retry.retryable(error, row.attempt):
            due = now + call.retry.delay(row.attempt)
            live.machine.note_retry(row.seq, row.attempt, described, due, now)
            live.backoff.add(row.seq)
            stage.dirty[row.instance_id] = live
            self._work.reschedule(stage, row, due)
            return
        self._work.clear(stage, row.id)
        described["attempts"] = str(row.attempt)
        self.drive(stage, live, live.machine.resolve(row.seq, now, err=described), now)

    # -- to rows, out of memory --------------------------------------------------------

    def flush(self, stage: Stage, updated: float) -> None:
        """Write the batch's dirty instances as journal chunks and instance rows;
        ``updated`` is their new update time (after the steps this batch ran)."""
        batch = stage.batch
        traces = self._traces
        for iid, live in stage.dirty.items():
            machine, row = live.machine, live.row
            if traces:  # (a parked instance's steps run no more, a backing-off one waits for
                # its timer: either segment ends)
                busy = machine.stuck_reason is None and machine.steps_running(live.backoff)
                self._observer.segment_flushed(iid, machine.status, busy)
            entries = machine.take_entries()
            if entries:
                batch.journal.append((iid, row.journal_len, entries))
                row.journal_len += len(entries)
            parked = machine.stuck_reason is not None and row.status != m.STUCK
            row.status = machine.status
            row.updated = updated
            row.result = machine.result
            row.error = (
                machine.error
                if machine.stuck_reason is None
                else {"type": "NonDeterminismError", "message": machine.stuck_reason}
            )
            # a copy: the live row changes again while this batch is being committed
            batch.instances[iid] = InstanceRow(
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
                if parked:
                    self._observer.instance_parked(iid, row.process, machine.stuck_reason)
        stage.dirty.clear()

    def _deactivate(self, key: str | None, iid: str) -> None:
        keyed = self._active.get(key)
        if keyed is not None and iid in keyed:
            keyed.remove(iid)
            if not keyed:
                del self._active[key]

    def evict(self, keep: Collection[str] = ()) -> None:
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
        while len(self._cache) > self._cache_size:
            iid, live = self._cache.popitem(last=False)
            if iid in keep:
                spared.append((iid, live))
            else:
                live.machine.close()
        for iid, live in spared:
            self._cache[iid] = live

    def forget(self, instance_ids: Iterable[str]) -> None:
        """Drop deleted instances (``runtime/retention.py``) from the cache."""
        for iid in instance_ids:
            live = self._cache.pop(iid, None)
            if live is not None:
                live.machine.close()

    def close(self) -> None:
        """Drop every cached instance (the engine stops or is abandoned); a trace
        segment still open for one of them ends."""
        if self._traces and self._cache:
            self._observer.instances_released(list(self._cache))
        for live in self._cache.values():
            live.machine.close()
        self._cache.clear()


async def _unregistered(ctx: Any, event: Any) -> None:
    """The code of a version this app does not have: never run, since such an instance
    is parked as stuck the moment it is loaded (``Machine.park``)."""
    raise RuntimeError("instances of unregistered versions are parked, never run")


def _abandoned(
    machine: m.Machine, command: m.ScheduleStep | m.ScheduleTask, todo: list[m.Command]
) -> bool:
    """Whether the commands still to carry out abandon the operation ``command`` starts."""
    seq = command.call.seq
    still = (
        machine.pending_step(seq)
        if isinstance(command, m.ScheduleStep)
        else machine.pending_task(seq)
    )
    if still is not None:  # the common case, at once: the code still waits for it
        return False
    return any(isinstance(c, m.Abandon) and c.seq == seq for c in todo)
