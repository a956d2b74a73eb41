"""The two ports the engine is written against: ``Log`` and ``Store``.

A *backend* bundles one log and one store whose ``commit`` is atomic across both: the
embedded SQLite backend keeps them in one file and commits in one transaction; the
memory backend applies a batch under one lock; the Kafka backend (see ``docs/``) maps a
batch to one Kafka transaction.

Every backend passes the same conformance suite (``tests/backends``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """A partitioned, append-only log of records."""

    @property
    def partitions(self) -> int:
        """Number of partitions (fixed at creation)."""

    def append(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        """Append atomically; returns (partition, offset) per record, ``None`` for a
        duplicate event id that was already in the log."""

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of ``partition`` from ``offset`` on, at most ``limit``."""

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get."""

    def find_event(self, event_id: str) -> Record | None:
        """The record holding that event id, if any."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when new records may exist. Returns an
        unsubscribe function. Wakeups are hints: readers must still read."""


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
    """Scheduled work: a step attempt, a timer, or a handler invocation."""

    id: str
    kind: str  # "step" | "timer" | "handler"
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
class InstanceSnapshot:
    """What the engine needs to rebuild an instance that is not in its cache."""

    row: InstanceRow
    journal: list[dict[str, Any]]
    inbox: list[InboxRow]


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
        )


class Store(Protocol):
    """Engine state: instances, journals, waits, work, inbox, dead letters, offsets."""

    def commit(self, batch: Batch) -> None:
        """Apply a batch, its appends and its offsets atomically."""

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

    def waits(self) -> list[WaitRow]: ...

    def work(self) -> list[WorkRow]: ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None: ...


class Backend(Protocol):
    """A log and a store that commit together."""

    @property
    def url(self) -> str: ...

    @property
    def log(self) -> Log: ...

    @property
    def store(self) -> Store: ...

    def engine_lock(self) -> Callable[[], None]:
        """Claim the right to run the engine; returns the release function.

        Raises:
            EngineBusy: another engine holds it.
        """

    def close(self) -> None: ...
