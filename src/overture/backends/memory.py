"""In-memory log and store, for tests and single-process experiments.

State lives in dicts guarded by one lock, so the memory backend behaves like the durable
ones apart from durability itself: a batch is applied all at once, offsets included, and
so are the task attempts it publishes or ends (:class:`MemoryTaskQueue`).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, EngineBusy, MalformedEvent, NotFound
from ..ports import (
    ActivityRow,
    Batch,
    Capabilities,
    Claim,
    ClaimedTask,
    DeadLetter,
    EngineBackend,
    FinishOutcome,
    InboxRow,
    InstanceQuery,
    InstanceRow,
    InstanceSnapshot,
    NewRecord,
    Record,
    StateKey,
    TaskRecord,
    WaitRow,
    WorkRow,
    partition_for,
)
from ..protocol import FINAL, TASK_COMPLETED, TASK_FAILED, Status, task_result_id
from . import queries
from .embedded import claim_whole, missing_letters
from .replies import check_reply


class MemoryState:
    """Engine state in dicts under one lock: the store half of ``memory://``, and the
    local copy of a partition's state that the Kafka backend rebuilds from its changelog."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._offsets: dict[str, dict[int, int]] = {}
        self._instances: dict[str, InstanceRow] = {}
        self._journals: dict[str, list[dict[str, Any]]] = {}
        # start positions of each journal's chunks: the Kafka changelog keys a chunk by
        # it, and a deleted instance's tombstones must name every one
        self._chunks: dict[str, list[int]] = {}
        # by (type, key, instance, seq): a deletion need not know a wait's ``home``
        self._waits: dict[tuple[str, str | None, str, int], WaitRow] = {}
        self._work: dict[str, WorkRow] = {}
        self._inbox: dict[str, InboxRow] = {}
        self._dlq: dict[str, DeadLetter] = {}
        self._state: dict[str, dict[bytes, bytes]] = {}  # keyed state, by namespace
        # (finish time, id) of finished instances, oldest first, for ``expired``: entries
        # of deleted (or rewritten) rows stay until they reach the top and are dropped
        # there, so a commit pays one push per instance it finishes and nothing more.
        self._finished: list[tuple[float, str]] = []
        # (created, id) of dead letters, the same way, for ``expired_dead_letters``
        self._letters: list[tuple[float, str]] = []

    def apply(self, batch: Batch) -> None:
        """Apply a batch's state changes and offsets (not its appends)."""
        with self._lock:
            self._offsets.setdefault(batch.group, {}).update(batch.offsets)
            for iid, row in batch.instances.items():
                self._instances[iid] = _copy_instance(row)
                if row.status in FINAL:
                    heapq.heappush(self._finished, (row.updated, iid))
            for iid, pos, entries in batch.journal:
                journal = self._journals.setdefault(iid, [])
                del journal[pos:]
                journal.extend(entries)
                starts = self._chunks.setdefault(iid, [])
                starts[:] = [p for p in starts if p < pos]
                starts.append(pos)
            for wait, present in batch.waits.items():
                ident = (wait.event_type, wait.key, wait.instance_id, wait.seq)
                if present:
                    self._waits[ident] = wait
                else:
                    self._waits.pop(ident, None)
            _apply(self._work, batch.work)
            _apply(self._inbox, batch.inbox)
            _apply(self._dlq, batch.dead_letters)
            for dl_id, letter in batch.dead_letters.items():
                if letter is not None:
                    heapq.heappush(self._letters, (letter.created, dl_id))
            if batch.state:
                self._apply_state(batch.state)
            if batch.expired:
                self._delete(set(batch.expired))

    def _delete(self, gone: set[str]) -> None:
        """Delete these instances and everything of theirs (``Batch.expired``)."""
        for iid in gone:
            self._instances.pop(iid, None)
            self._journals.pop(iid, None)
            self._chunks.pop(iid, None)
        waits = [k for k, w in self._waits.items() if w.instance_id in gone]
        for wait in waits:
            del self._waits[wait]
        for table in (self._work, self._inbox):
            doomed = [k for k, v in table.items() if v.instance_id in gone]
            for k in doomed:
                del table[k]

    def belongings(
        self, instance_ids: Collection[str]
    ) -> tuple[list[tuple[str, int]], list[WaitRow], list[str], list[str]]:
        """What is stored of these instances: (instance, chunk start) of their journal
        chunks, their waits, the ids of their work rows and of their inbox rows (the
        Kafka changelog's tombstones for ``Batch.expired``)."""
        wanted = set(instance_ids)
        with self._lock:
            chunks = [(i, pos) for i in instance_ids for pos in self._chunks.get(i, ())]
            waits = [w for w in self._waits.values() if w.instance_id in wanted]
            work = [k for k, w in self._work.items() if w.instance_id in wanted]
            inbox = [k for k, r in self._inbox.items() if r.instance_id in wanted]
        return chunks, waits, work, inbox

    def _apply_state(self, changes: dict[StateKey, bytes | None]) -> None:
        for (namespace, key), value in changes.items():
            if value is None:
                entries = self._state.get(namespace)
                if entries is not None:
                    entries.pop(key, None)
                    if not entries:
                        del self._state[namespace]
            else:
                # bytes(): a caller's bytearray or memoryview must not change it later
                self._state.setdefault(namespace, {})[bytes(key)] = bytes(value)

    def commit(self, batch: Batch) -> None:
        self.apply(batch)

    def offsets(self, group: str) -> dict[int, int]:
        with self._lock:
            return dict(self._offsets.get(group, {}))

    def instance(self, instance_id: str) -> InstanceRow | None:
        with self._lock:
            row = self._instances.get(instance_id)
            return None if row is None else _copy_instance(row)

    def existing(self, instance_ids: Collection[str]) -> set[str]:
        with self._lock:
            return {i for i in instance_ids if i in self._instances}

    def snapshots(self, instance_ids: Collection[str]) -> dict[str, InstanceSnapshot]:
        out = {}
        for iid in instance_ids:
            row = self.instance(iid)
            if row is not None:
                out[iid] = InstanceSnapshot(row, self.journal(iid), self._inbox_of(iid))
        return out

    def journal(self, instance_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._journals.get(instance_id, []))

    def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[InstanceRow]:
        with self._lock:
            rows = [
                _copy_instance(r)
                for r in self._instances.values()
                if (process is None or r.process == process)
                and (status is None or r.status == status)
            ]
        rows.sort(key=lambda r: (r.created, r.id))
        return rows[:limit]

    def find_instances(self, query: InstanceQuery) -> list[InstanceRow]:
        with self._lock:
            page = queries.find(self._instances.values(), query)
        return [_copy_instance(r) for r in page]

    def count_instances(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        with self._lock:
            return queries.counts(self._instances.values(), process)

    def instance_activity(self, since: float, width: float) -> list[ActivityRow]:
        with self._lock:
            return queries.activity(
                self._instances.values(), since, width, (Status.COMPLETED, Status.FAILED)
            )

    def active_instances(self) -> list[tuple[str, str | None]]:
        with self._lock:
            return [(r.id, r.key) for r in self._instances.values() if r.status not in FINAL]

    def waits(self) -> list[WaitRow]:
        with self._lock:
            return list(self._waits.values())

    def expired(self, before: float, limit: int) -> tuple[list[str], float | None]:
        def finished(iid: str) -> float | None:
            row = self._instances.get(iid)
            return None if row is None or row.status not in FINAL else row.updated

        with self._lock:
            return _oldest(self._finished, finished, before, limit)

    def work(self) -> list[WorkRow]:
        with self._lock:
            return [
                WorkRow(**{f: getattr(w, f) for f in WorkRow.__slots__})
                for w in self._work.values()
            ]

    def _inbox_of(self, instance_id: str) -> list[InboxRow]:
        with self._lock:
            rows = [r for r in self._inbox.values() if r.instance_id == instance_id]
        return sorted(rows, key=lambda r: (r.received, r.id))

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            return sorted(self._dlq.values(), key=lambda d: (d.created, d.id))

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        with self._lock:
            return self._dlq.get(dead_letter_id)

    def expired_dead_letters(self, before: float, limit: int) -> tuple[list[str], float | None]:
        def created(dl_id: str) -> float | None:
            letter = self._dlq.get(dl_id)
            return None if letter is None else letter.created

        with self._lock:
            return _oldest(self._letters, created, before, limit)

    def get(self, namespace: str, key: bytes) -> bytes | None:
        with self._lock:
            entries = self._state.get(namespace)
            return None if entries is None else entries.get(key)

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        # Sorted per scan: dicts keep the order of insertion, not of keys, and scans are
        # rare next to puts (window and pattern state reads by key).
        with self._lock:
            entries = self._state.get(namespace)
            if not entries:
                return []
            found = [(k, v) for k, v in entries.items() if k.startswith(prefix)]
        found.sort()
        return found


class MemoryBackend(MemoryState):
    """Both the log and the store of ``memory://``, for clients and for its one engine."""

    capabilities = Capabilities(
        dedups_event_ids=True,
        finds_events_by_id=True,
        local_lock=True,
        commit="inline",  # a commit only updates dicts: no reason to leave the loop
        partitioned=False,
        remote=False,
        deletes_dead_letters=True,
    )
    owned = None

    def __init__(self, url: str, partitions: int) -> None:
        super().__init__()
        self.url = url
        self._partitions = partitions
        self._parts: list[list[Record]] = [[] for _ in range(partitions)]
        self._event_ids: dict[str, Record] = {}
        self._watchers: list[Callable[[], None]] = []
        self._finished_watchers: list[Callable[[list[str] | None], None]] = []
        self._rr = 0
        self._engine_claimed = False
        self.log = self
        self.store = self
        self.tasks = MemoryTaskQueue(self)

    # -- Log ----------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partitions

    def append(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        with self._lock:
            out = self._append_locked(records)
        self._wake()
        return out

    def _append_locked(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        now = time.time()
        for rec in records:
            if rec.event_id is not None and rec.event_id in self._event_ids:
                out.append(None)
                continue
            self._rr += 1
            part = (
                partition_for(rec.key, self._partitions, self._rr)
                if rec.partition is None
                else rec.partition % self._partitions
            )
            # a copy: orjson hands out ~4 KB buffers for short results, kept for good here
            value = bytes(memoryview(rec.value))
            stored = Record(part, len(self._parts[part]), rec.key, value, now)
            self._parts[part].append(stored)
            if rec.event_id is not None:
                self._event_ids[rec.event_id] = stored
            out.append((part, stored.offset))
        return out

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        with self._lock:
            return self._parts[partition][offset : offset + limit]

    def end_offset(self, partition: int) -> int:
        with self._lock:
            return len(self._parts[partition])

    def find_event(self, event_id: str) -> Record | None:
        with self._lock:
            return self._event_ids.get(event_id)

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        return _watch(self._lock, self._watchers, wake)

    def _wake(self) -> None:
        for wake in list(self._watchers):
            wake()

    # -- Store --------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        with self._lock:
            if batch.appends:
                self._append_locked(batch.appends)
            self.apply(batch)
            if batch.tasks:
                self.tasks.apply(batch.tasks)
            if batch.expired:
                self.tasks.forget(batch.expired)
        if batch.appends:
            self._wake()
        if batch.tasks and any(record is not None for record in batch.tasks.values()):
            self.tasks.wake()
        if self._finished_watchers:
            finished = [i for i, row in batch.instances.items() if row.status in FINAL]
            if finished:
                for wake in list(self._finished_watchers):
                    wake(finished)

    def delete_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        with self._lock:
            wanted = list(self._dlq) if ids is None else list(dict.fromkeys(ids))
            missing = [i for i in wanted if i not in self._dlq]
            if missing:
                raise NotFound(missing_letters(missing))
            for dl_id in wanted:
                del self._dlq[dl_id]
            return wanted

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` with the ids of the instances each commit finishes (from the
        committing thread). Returns the unsubscribe function."""
        self._finished_watchers.append(wake)

        def unsubscribe() -> None:
            if wake in self._finished_watchers:
                self._finished_watchers.remove(wake)

        return unsubscribe

    # -- Backend / EngineBackend ------------------------------------------------------------

    def claim(
        self,
        group_key: str,
        on_assign: Callable[[Mapping[int, EngineBackend]], None],
        on_revoke: Callable[[list[int]], None],
        on_failure: Callable[[BaseException], None],
    ) -> Claim:
        return claim_whole(self, on_assign, on_revoke)

    def reload(self) -> None:
        """Nothing to reload: the dicts are the committed state."""

    def engine_lock(self) -> Callable[[], None]:
        with self._lock:
            if self._engine_claimed:
                raise EngineBusy(f"an engine is already running on {self.url}")
            self._engine_claimed = True

        def release() -> None:
            with self._lock:
                self._engine_claimed = False

        return release

    def close(self) -> None:
        """Nothing to release: the data lives as long as the process (or until
        ``forget_memory_backends``)."""


@dataclass(slots=True)
class _Attempt:
    """A published task attempt: open until the engine ends it or a worker finishes it."""

    record: TaskRecord
    open: bool = True
    worker: str | None = None
    lease_until: float = 0.0


class MemoryTaskQueue:
    """The task queue of ``memory://`` (``ports.TaskQueue``): the attempts its engine's
    commits publish, in publication order, under the backend's lock, so that a batch's
    attempts appear with the rest of the batch and a worker's ``finish`` appends the
    result and ends the claim at once.

    Leases are measured with the real clock (``time.time()``), not the engine's: workers
    run in real time even when a test's engine runs on a virtual clock. An attempt stays
    known once ended (never claimable again, ``finish`` answers ``"ended"``); the queue
    lives as long as the backend, which is what a test needs.
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._lock = backend._lock
        self._attempts: dict[str, _Attempt] = {}  # insertion order: oldest first
        self._watchers: list[Callable[[], None]] = []

    def apply(self, tasks: Mapping[str, TaskRecord | None]) -> None:
        """Apply a batch's ``tasks`` (called by the commit, under the backend's lock)."""
        for task_id, record in tasks.items():
            known = self._attempts.get(task_id)
            if record is not None:
                if known is None:  # publishing an attempt again changes nothing
                    self._attempts[task_id] = _Attempt(record)
            elif known is not None:
                known.open = False

    def forget(self, instance_ids: Collection[str]) -> None:
        """Drop the ended attempts of deleted instances (under the backend's lock)."""
        prefixes = tuple(f"task:{iid}:" for iid in instance_ids)
        doomed = [k for k, a in self._attempts.items() if not a.open and k.startswith(prefixes)]
        for k in doomed:
            del self._attempts[k]

    def wake(self) -> None:
        for wake in list(self._watchers):
            wake()

    def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[ClaimedTask]:
        _check_claimant(worker, lease)
        if (
            isinstance(queues, str)
            or not queues
            or not all(isinstance(q, str) and q for q in queues)
        ):
            raise ConfigError(f"claim: queues must be a list of queue names, not {queues!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"claim: limit must be a non-negative integer, not {limit!r}")
        wanted = set(queues)
        claimed: list[ClaimedTask] = []
        with self._lock:
            now = time.time()
            for task_id, attempt in self._attempts.items():
                if len(claimed) >= limit:
                    break
                held = attempt.worker is not None and attempt.lease_until > now
                if not attempt.open or held or attempt.record.queue not in wanted:
                    continue
                attempt.worker, attempt.lease_until = worker, now + lease
                record = attempt.record
                claimed.append(ClaimedTask(task_id, record.queue, record.request, now + lease))
        return claimed

    def heartbeat(self, task_id: str, worker: str, lease: float) -> bool:
        _check_claimant(worker, lease)
        with self._lock:
            attempt = self._attempts.get(task_id)
            if attempt is None or not attempt.open or attempt.worker != worker:
                return False
            attempt.lease_until = time.time() + lease
            return True

    def finish(
        self, task_id: str, worker: str, result: NewRecord, *, durable: bool = True
    ) -> FinishOutcome:
        if not isinstance(worker, str) or not worker:
            raise ConfigError(f"finish: worker must be a non-empty str, not {worker!r}")
        if result.event_id != task_result_id(task_id):
            # a result built for another attempt would be applied to that one
            raise MalformedEvent(
                f"finish: the result of {task_id!r} must have the event id "
                f"{task_result_id(task_id)!r} (tasks.completed / tasks.failed build it), "
                f"not {result.event_id!r}"
            )
        if result.event_type not in (TASK_COMPLETED, TASK_FAILED):
            raise MalformedEvent(
                f"finish: the result of {task_id!r} must be a {TASK_COMPLETED!r} or "
                f"{TASK_FAILED!r} event, not {result.event_type!r}"
            )
        with self._lock:
            attempt = self._attempts.get(task_id)
            if attempt is None:
                return "unknown"
            check_reply(task_id, attempt.record.request, result)  # as SQLite
            if not attempt.open:
                return "ended"
            attempt.open = False
            if self._backend._append_locked([result]) == [None]:
                # a result with this id is on the log already (written by another path):
                # this one is a duplicate, and the attempt is over all the same (as SQLite)
                return "ended"
        self._backend._wake()
        return "accepted"

    def finish_many(
        self, worker: str, finishes: Sequence[tuple[str, NewRecord]], *, durable: bool = True
    ) -> list[FinishOutcome | Exception]:
        if not isinstance(worker, str) or not worker:
            raise ConfigError(f"finish: worker must be a non-empty str, not {worker!r}")
        out: list[FinishOutcome | Exception] = []
        for task_id, result in finishes:
            try:
                out.append(self.finish(task_id, worker, result, durable=durable))
            except Exception as error:  # this result alone fails (not the attempt's, refused)
                out.append(error)
        return out

    def request(self, task_id: str) -> bytes | None:
        with self._lock:
            attempt = self._attempts.get(task_id)
            return None if attempt is None else attempt.record.request

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        return _watch(self._lock, self._watchers, wake)


def _watch(
    lock: threading.Lock | threading.RLock,
    watchers: list[Callable[[], None]],
    wake: Callable[[], None],
) -> Callable[[], None]:
    """Add ``wake`` to ``watchers`` (guarded by ``lock``); returns its removal."""
    with lock:
        watchers.append(wake)

    def unsubscribe() -> None:
        with lock:
            if wake in watchers:
                watchers.remove(wake)

    return unsubscribe


def _check_claimant(worker: str, lease: float) -> None:
    if not isinstance(worker, str) or not worker:
        raise ConfigError(f"a worker id is a non-empty str, not {worker!r}")
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease < math.inf:
        raise ConfigError(f"a lease is a positive, finite number of seconds, not {lease!r}")


def _oldest(
    heap: list[tuple[float, str]],
    stamp: Callable[[str], float | None],
    before: float,
    limit: int,
) -> tuple[list[str], float | None]:
    """At most ``limit`` ids of ``heap`` (time, id), oldest first, whose time is at or
    before ``before``, and the time of the first one left (``None``: none). An entry
    whose id's current ``stamp`` differs (deleted or rewritten since it was pushed) is
    dropped on the way; the ones taken stay (still stored until their deletion commits)."""
    taken: list[tuple[float, str]] = []
    ids: list[str] = []
    following: float | None = None
    while heap:
        at, key = heap[0]
        if stamp(key) != at:
            heapq.heappop(heap)
            continue
        if at > before or len(ids) >= limit:
            following = at
            break
        taken.append(heapq.heappop(heap))
        if not ids or ids[-1] != key:
            ids.append(key)
    for entry in taken:
        heapq.heappush(heap, entry)
    return ids, following


def _apply(table: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def _copy_instance(row: InstanceRow) -> InstanceRow:
    return InstanceRow(**{f: getattr(row, f) for f in InstanceRow.__slots__})
