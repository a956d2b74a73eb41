"""The backend port: what the engine, the clients and the host are written against.

Split by who uses what, so that no backend has a method it "does not support":

- a client (and a host) opens a :class:`Backend`: the log it appends to
  (:class:`AppendLog`), the state it reads (:class:`StateView`, read-only), results as
  commits finish them, and :meth:`Backend.claim`, how engines get their partitions;
- one engine runs on an :class:`EngineBackend`: the log it reads (:class:`Log`; it appends
  through its commits) and the :class:`Store` it commits to, atomically with its offsets.

The embedded backends are both (a SQLite file or ``memory://`` holds every partition:
their claim hands the engine the backend itself, guarded by ``engine_lock``); on Kafka
the claim is membership of the engine group, which hands over one ``EngineBackend`` per
assigned partition. What differs between backends is declared in :class:`Capabilities`,
never inferred from a URL or an attribute.

Every backend passes the same conformance suite (``tests/backends``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Headers = tuple[tuple[str, bytes | None], ...]
"""A Kafka record's headers, in order (a name may repeat; a value may be null)."""


@dataclass(frozen=True, slots=True)
class Wire:
    """A record exactly as it arrived, for a log whose records are not the events' own
    structured form (Kafka: the record's key, headers and value bytes, from which the log
    made the structured event the engine reads). Dead letters keep it, and an event
    forwarded to another partition travels as it, byte for byte."""

    key: bytes | None
    headers: Headers
    value: bytes | None


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to append. ``event_id`` (when known) deduplicates appends."""

    key: str | None
    value: bytes
    event_id: str | None = None
    event_type: str | None = None
    partition: int | None = None
    """Overrides the key's partition (control events for a dead letter's partition)."""
    internal: bool = False
    """A re-keyed event on its way to the partition of its key: the Kafka backend sends it
    through the internal topic; the other logs, whose engines own every partition, never
    see one."""
    wire: Wire | None = None
    """The record as it first arrived (a re-keyed Kafka record): sent as it is, to the
    partition of ``key``, instead of ``value`` in binary mode."""


@dataclass(frozen=True, slots=True)
class Record:
    """A record read back from the log."""

    partition: int
    offset: int
    key: str | None
    """The event's partition key as text: ``None`` for a keyless event (on Kafka also for a
    record key that is not text, whose bytes ``wire`` keeps: see ``overture.binding``)."""
    value: bytes
    """The event in CloudEvents structured JSON form (``events.decode`` reads it)."""
    timestamp: float
    wire: Wire | None = None
    """The record as it arrived, when the log translated it into ``value`` (Kafka)."""
    error: str | None = None
    """Why the log could not translate the record into an event, in terms of the bytes
    that arrived (``wire``); the engine dead-letters such a record with this reason."""


def partition_for(key: str | None, partitions: int, fallback: int = 0) -> int:
    """The partition of a key: stable across processes and languages (CRC-32)."""
    if key is None or partitions == 1:
        return fallback % partitions
    return zlib.crc32(key.encode()) % partitions


class Log(Protocol):
    """A partitioned, append-only log of records, as an engine reads it."""

    @property
    def partitions(self) -> int:
        """Number of partitions (fixed at creation)."""

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of ``partition`` from ``offset`` on, at most ``limit``."""

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when new records may exist. Returns an
        unsubscribe function. Wakeups are hints: readers must still read."""


class AppendLog(Log, Protocol):
    """The log as clients see it: they also append, and look events up."""

    def append(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        """Append atomically; returns (partition, offset) per record, ``None`` for a
        duplicate event id that was already in the log (only where
        :attr:`Capabilities.dedups_event_ids`)."""

    def find_event(self, event_id: str) -> Record | None:
        """The record holding that event id, if any (a scan of the whole log unless
        :attr:`Capabilities.finds_events_by_id`)."""


# -- state rows ---------------------------------------------------------------------------


@dataclass(slots=True)
class InstanceRow:
    id: str
    process: str
    version: int
    key: str | None
    status: str
    partition: int
    created: float
    updated: float
    trigger_id: str
    result: Any = None
    error: Any = None
    journal_len: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceQuery:
    """Which instances :meth:`StateView.find_instances` returns: every filter given
    must hold; rows come newest first (by ``created``, then ``id``, both descending)."""

    process: str | None = None
    status: str | None = None
    key: str | None = None
    created_from: float | None = None
    """Unix time: only instances created at or after it."""
    created_to: float | None = None
    """Unix time: only instances created before it."""
    search: str | None = None
    """An instance id, an id's prefix, or a key: rows matching any of the three."""
    before: tuple[float, str] | None = None
    """A page's keyset cursor: only rows after (older than) this ``(created, id)``."""
    limit: int = 50


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """Instances started, completed and failed in one time bucket
    (:meth:`StateView.instance_activity`)."""

    start: float
    """The bucket's first moment (Unix time)."""
    started: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class WaitRow:
    event_type: str
    key: str | None
    instance_id: str
    seq: int
    home: int | None = None
    """Set on a wait registered *for* an instance of another partition (``home``): an
    engine that owns only some partitions keeps such a wait on the partition of the
    awaited key and forwards the matching event home. Only partitioned backends (Kafka)
    store one."""


@dataclass(slots=True)
class WorkRow:
    """Scheduled work: a step attempt, a timer, a handler invocation, or a task call
    (``runtime/tasks.py``)."""

    id: str
    kind: str  # "step" | "timer" | "handler" | "task"
    due: float
    attempt: int = 1
    instance_id: str | None = None
    seq: int | None = None
    name: str | None = None
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class InboxRow:
    """An event that arrived for a running instance before it waited for it."""

    id: str
    instance_id: str
    event_type: str
    key: str | None
    value: bytes
    received: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    created: float
    reason: str
    attempts: int
    source: str  # "decode" | "route" | "handler:<name>"
    event_type: str | None
    key: str | None
    """The event's partition key as text, if it has one (where a replay request goes)."""
    value: bytes
    """The bytes as they arrived: for a record a Kafka log translated (``headers`` set) the
    record's value (empty for a null value); else the event's structured form (for a
    handler's letter: the event the handler was given)."""
    partition: int | None = None
    offset: int | None = None
    raw_key: bytes | None = None
    """The Kafka record's key as it arrived (any bytes), or ``None``."""
    headers: Headers | None = None
    """The Kafka record's headers as they arrived; ``None`` when ``value`` is the event's
    structured form (every letter of the other logs, and handler letters)."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task attempt the engine publishes for workers: one queue entry.

    ``request`` is the ``overture.task.requested`` CloudEvent (structured JSON, as a
    worker reads it); ``id`` is its event id (``protocol.task_attempt_id``)."""

    id: str
    queue: str
    request: bytes
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task attempt a worker holds until ``lease_until`` (Unix time; it renews the
    lease with :meth:`TaskQueue.heartbeat`)."""

    id: str
    queue: str
    request: bytes
    lease_until: float


FinishOutcome = Literal["accepted", "unknown", "ended"]
"""What :meth:`TaskQueue.finish` did: ``accepted`` (the result is on the log),
``unknown`` (no such attempt was ever published), ``ended`` (the attempt is over: the
engine applied a result, gave it up at its deadline, or the instance ended; nothing was
written)."""


class TaskQueue(Protocol):
    """The task attempts engines publish (``Batch.tasks``), as workers take them.

    At least once per attempt: an attempt whose lease runs out before its worker finished
    it is handed to the next claimer. A worker in another language speaks the same
    protocol over HTTP (the API's task endpoints call these methods) or, on Kafka, reads
    the queue's topic itself.
    """

    def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[ClaimedTask]:
        """Take up to ``limit`` attempts of the given queues that nobody holds (never
        claimed, or their lease ran out), oldest first, leased to ``worker`` for
        ``lease`` seconds. Returns at once, possibly with nothing (see :meth:`subscribe`)."""

    def heartbeat(self, task_id: str, worker: str, lease: float) -> bool:
        """Extend ``worker``'s lease of an attempt by ``lease`` seconds from now; False if
        it is not ``worker``'s any more (its lease ran out and another worker claimed it,
        or the attempt ended): the worker should stop."""

    def finish(
        self, task_id: str, worker: str, result: NewRecord, *, durable: bool = True
    ) -> FinishOutcome:
        """Append ``result`` (the attempt's ``overture.task.completed`` or ``.failed``
        event) to the log and end the claim, in one transaction where the backend has
        one. A result from a worker whose lease ran out is still accepted while the
        attempt is open (the engine keeps the first result of an attempt).

        ``durable=False``: the caller tells no one outside that the result was accepted
        (a worker process does not: it only goes on to its next attempt), so a backend
        may return before the result is on the disk. A crash of any process loses
        nothing even so (SQLite: the transaction is in the WAL file); a power loss may
        lose it, and the attempt is then handed out again when its lease ends, as after
        a crash before the finish (at least once per attempt). No committed state rests
        on a result the disk may lose: the engine's commit that applies it waits for the
        disk, and its fsync covers the WAL's earlier frames too (a step the engine runs
        eagerly on the result before that commit may run again after a power loss, as
        any step may: at least once). The HTTP API's complete and fail keep
        ``durable=True``: their answer says the result is kept."""

    def finish_many(
        self, worker: str, finishes: Sequence[tuple[str, NewRecord]], *, durable: bool = True
    ) -> list[FinishOutcome | Exception]:
        """:meth:`finish` for several attempts of ``worker`` (``(task id, result)`` pairs)
        at once, each as if finished alone, at the cost of one: SQLite writes them in one
        transaction, Kafka produces every result before it waits for the acknowledgements.
        Returns, in order, each attempt's outcome, or the exception its :meth:`finish`
        would have raised (a result that is not the attempt's, one the log refuses, a
        storage or broker failure): one bad result fails alone. A worker hands the
        results of its attempts to this together (``worker_threads.Coalescer``): W5 1.5x
        the throughput of one transaction per result (docs/benchmarks.md)."""

    def request(self, task_id: str) -> bytes | None:
        """The request of a published attempt, open or ended (``TaskRecord.request``), so
        that any process answering for a worker (an HTTP API process other than the one
        whose claim handed the attempt out) can build its result; None if this queue does
        not know it (on Kafka: knows only the attempts this process's consumers hold)."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when attempts may have been published; a hint
        for long polls, not a guarantee. Returns the unsubscribe function."""


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """What the engine needs to rebuild an instance that is not in its cache."""

    row: InstanceRow
    journal: list[dict[str, Any]]
    inbox: list[InboxRow]


StateKey = tuple[str, bytes]
"""A keyed-state entry's address: (namespace, key). The namespace names the owner (a
window operator, a pattern, the task leases: ``"window:orders-per-minute"``); keys are
bytes, compared byte by byte, so a caller chooses an encoding whose byte order is the
order it scans in (big-endian integers, UTF-8 text, a length-prefixed tuple)."""


@dataclass(slots=True)
class Batch:
    """Everything one engine iteration changes; committed atomically.

    Mapping values of ``None`` delete the row, so a row added and removed within one
    batch never reaches the store.
    """

    group: str
    offsets: dict[int, int] = field(default_factory=dict)
    appends: list[NewRecord] = field(default_factory=list)
    instances: dict[str, InstanceRow] = field(default_factory=dict)
    journal: list[tuple[str, int, list[dict[str, Any]]]] = field(default_factory=list)
    waits: dict[WaitRow, bool] = field(default_factory=dict)
    work: dict[str, WorkRow | None] = field(default_factory=dict)
    inbox: dict[str, InboxRow | None] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter | None] = field(default_factory=dict)
    state: dict[StateKey, bytes | None] = field(default_factory=dict)
    """Keyed state: (namespace, key) -> the new value, or ``None`` (a tombstone: the
    entry is deleted). For everything else a batch commits (window aggregates, pattern
    buffers, schema versions): no new table, column or changelog kind."""
    tasks: dict[str, TaskRecord | None] = field(default_factory=dict)
    """Task attempts published to their queues (``TaskQueue``), by attempt id; ``None``
    ends an attempt (a result was applied, its deadline passed, its instance ended): no
    worker claims it any more and a result for it is refused."""
    expired: list[str] = field(default_factory=list)
    """Finished instances to delete wholly, past their retention (``runtime/retention.py``):
    the instance row, its journal, waits, work rows, buffered inbox events and ended task
    attempts. Applied after every other change of the batch, so nothing of theirs that
    the batch also wrote survives."""
    trim_log: float | None = None
    """Delete log records appended before this time (their timestamp) that every
    consumer group has committed past, a bounded number per partition, never the newest
    record of a partition (it carries the partition's next offset) nor the trigger of an
    unfinished instance. SQLite applies it; the memory log keeps everything (tests); on
    Kafka the events topic's ``retention.ms`` does it."""

    def empty(self) -> bool:
        return not (
            self.offsets
            or self.appends
            or self.instances
            or self.journal
            or self.waits
            or self.work
            or self.inbox
            or self.dead_letters
            or self.state
            or self.tasks
            or self.expired
            or self.trim_log is not None
        )


class StateView(Protocol):
    """Engine state as clients and tools read it: instances, journals, waits, work,
    inbox, dead letters, offsets, keyed state. Read-only."""

    def offsets(self, group: str) -> dict[int, int]:
        """Committed next-offsets per partition for a consumer group."""

    def instance(self, instance_id: str) -> InstanceRow | None: ...

    def existing(self, instance_ids: Collection[str]) -> set[str]:
        """Which of these instance ids are stored (one round trip)."""

    def journal(self, instance_id: str) -> list[dict[str, Any]]: ...

    def snapshots(self, instance_ids: Collection[str]) -> dict[str, InstanceSnapshot]:
        """Row, journal and buffered events of each stored instance (bulk; ids with no
        row are left out)."""

    def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[InstanceRow]: ...

    def active_instances(self) -> list[tuple[str, str | None]]:
        """(id, key) of every instance that has not finished."""

    def find_instances(self, query: InstanceQuery) -> list[InstanceRow]:
        """One page of the instances ``query`` selects, newest first (at most
        ``query.limit`` rows; pass the last row's ``(created, id)`` as ``before`` for the
        next page)."""

    def count_instances(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        """How many instances each (process, status) has, counted in the store."""

    def instance_activity(self, since: float, width: float) -> list[ActivityRow]:
        """Instances started (by ``created``), completed and failed (by ``updated``)
        per bucket of ``width`` seconds from ``since`` until now, oldest first; buckets
        with nothing in them are left out."""

    def waits(self) -> list[WaitRow]: ...

    def expired(self, before: float, limit: int) -> tuple[list[str], float | None]:
        """At most ``limit`` ids of finished instances (completed, failed, cancelled)
        whose finish time (``updated``) is at or before ``before``, and the earliest finish time
        of the finished instances that remain after those (``None``: none remains)."""

    def work(self) -> list[WorkRow]: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None: ...

    def expired_dead_letters(self, before: float, limit: int) -> tuple[list[str], float | None]:
        """At most ``limit`` ids of dead letters created at or before ``before``, oldest
        first, and the creation time of the oldest one left after those (``None``: none
        is left): ``--dlq-retention``'s candidates."""

    def get(self, namespace: str, key: bytes) -> bytes | None:
        """The value of a keyed-state entry, ``None`` if there is none."""

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """(key, value) of every entry of ``namespace`` whose key starts with ``prefix``,
        in byte order of the keys."""


class Store(StateView, Protocol):
    """The state one engine commits to."""

    def commit(self, batch: Batch) -> None:
        """Apply a batch, its appends and its offsets atomically."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend does, declared by it (the runtime never infers it from a URL or
    the presence of a method). The conformance suite checks each as declared."""

    dedups_event_ids: bool
    """``AppendLog.append`` drops a record whose event id the log already holds (returns
    ``None`` for it). Where False, the engines' instance ids still start one instance per
    trigger event id."""
    finds_events_by_id: bool
    """``AppendLog.find_event`` is an index lookup. Where False it reads the whole log:
    fine for tests and tools, not for a hot path."""
    local_lock: bool
    """``EngineBackend.engine_lock`` is a lock on this machine (one engine per database
    file or memory log). Where False, the claim that handed out the engine backend (the
    group's assignment) is what makes its engine the only one, and the lock is a no-op."""
    commit: Literal["inline", "thread"]
    """How an engine runs ``Store.commit``: inline on the event loop (it only updates
    memory), or in a thread while the engine builds the next batch (it waits for a disk
    or a cluster)."""
    partitioned: bool
    """A consumer group shares the partitions out among engine processes (one engine
    backend per assigned partition, restored afresh after a failed commit); else one
    engine owns every partition."""
    remote: bool
    """Calls wait for the network: an asyncio caller runs them in a worker thread
    instead of on its event loop."""
    trims_log: bool = False
    """``Batch.trim_log`` deletes old consumed log records (SQLite). Where False the log
    keeps them (memory) or the broker's topic retention deletes them (Kafka), and the
    engine's retention passes run only when an instance expires."""
    deletes_dead_letters: bool = False
    """``Backend.delete_dead_letters`` deletes in one transaction of the store, engine
    running or not (the embedded backends: the engine keeps no dead letter in memory
    beyond the batch it commits). Where False the engines own the dead letters (Kafka:
    their changelog) and a client asks them with ``overture.dlq.delete``."""


@runtime_checkable
class EngineBackend(Protocol):
    """What one engine runs on: the log it reads, the store it commits to.

    ``ov.Engine(app, open_backend("sqlite:///x.db"))`` works because the embedded
    backends are one (an engine owning every partition); a ``kafka://`` backend is not:
    its engines run on the partitions its claim hands over (``runtime.host.Host``).
    """

    @property
    def url(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def log(self) -> Log: ...

    @property
    def store(self) -> Store: ...

    @property
    def owned(self) -> list[int] | None:
        """The (logical) partitions its engine consumes; ``None``: every partition."""

    def engine_lock(self) -> Callable[[], None]:
        """Claim the right to run the engine; returns the release function (see
        :attr:`Capabilities.local_lock`).

        Raises:
            EngineBusy: another engine holds it.
        """

    def reload(self) -> None:
        """Drop what this process holds of the state and read it afresh from what was
        committed: after a commit whose outcome is unknown (it may have committed
        although it reported a failure). A no-op where the store is the committed state
        itself (the embedded backends).

        Raises:
            Fenced: the partitions are no longer this process's.
        """


class Claim(Protocol):
    """The partitions this process's engines hold, from :meth:`Backend.claim`."""

    @property
    def assigned(self) -> list[int]:
        """The partitions held now."""

    def caught_up(self) -> bool:
        """Whether every record committed to the held partitions so far has reached
        their engines' logs."""

    def close(self) -> None:
        """Give the partitions up (blocking until ``on_revoke`` returned)."""


class Backend(Protocol):
    """What clients and hosts open (``overture.backends.open_backend``)."""

    @property
    def url(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def log(self) -> AppendLog: ...

    @property
    def store(self) -> StateView: ...

    @property
    def tasks(self) -> TaskQueue:
        """The task queues, as workers and the HTTP API's task endpoints take them."""

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) with the ids of the instances each commit
        finishes, or with ``None`` when something may have finished unseen (the caller
        re-reads what it waits for). Returns the unsubscribe function."""

    def delete_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        """Delete these dead letters (``None``: every one) in one transaction; returns
        the ids deleted.

        Raises:
            NotFound: an id names no dead letter (the message lists them); nothing was
                deleted.
            ConfigError: the backend does not delete dead letters itself
                (``Capabilities.deletes_dead_letters`` is False: ask its engines).
        """

    def claim(
        self,
        group_key: str,
        on_assign: Callable[[Mapping[int, EngineBackend]], None],
        on_revoke: Callable[[list[int]], None],
        on_failure: Callable[[BaseException], None],
    ) -> Claim:
        """Claim partitions for this process's engines: ``on_assign`` gets an engine
        backend per partition handed over, ``on_revoke`` the partitions taken back
        (it must return only once their engines stopped), ``on_failure`` an error that
        ends the claim. The embedded backends hand over themselves at once, as
        partition 0 covering every partition (their engine's ``engine_lock`` makes it
        the only one); Kafka joins the engine group.
        """

    def close(self) -> None: ...


Broker = Backend
"""The name of :class:`Backend` before 0.2 ("broker" now means the Kafka server only);
kept so that existing code runs."""
