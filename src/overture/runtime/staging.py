"""What one iteration of the partition loop works on: the batch being staged (`Stage`),
the outcomes of work, and the live (cached) instances.

A :class:`Stage` is made by the loop at the start of an iteration and handed explicitly to
every method that stages something; when the iteration ends its ``batch`` is committed
and the stage is dropped. Nothing outside an iteration can stage a change, so no object
keeps a "current batch" of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..core import machine as m
from ..errors import MalformedEvent
from ..events import Envelope
from ..ports import Batch, InboxRow, InstanceRow, InstanceSnapshot, WaitRow, WorkRow

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class Live:
    """A cached instance: its machine, its row, and its buffered events."""

    machine: m.Machine
    row: InstanceRow
    inbox: list[InboxRow] = field(default_factory=list)
    backoff: set[int] = field(default_factory=set)
    """Its steps (by seq) waiting out a retry's backoff: it is blocked on their timers,
    so its trace segment ends (a step's next attempt runs in a segment of its own)."""


@dataclass(slots=True)
class Outcome:
    """How one attempt of a step or handler ended, reported to the loop."""

    work_id: str
    attempt: int
    ok: bool
    value: Any
    stored: bool = True
    """False for a first attempt that succeeded eagerly and never got a work row."""
    began: float = 0.0
    """``time.monotonic()`` when the attempt started (for the observer's duration)."""


class Staged(Generic[K, V]):
    """One table's changes within a batch. A row created and deleted again within the
    same batch never reaches the store (the common case: a step that finishes in the
    batch that scheduled it)."""

    def __init__(self, changes: dict[K, V], tombstone: V) -> None:
        self.changes = changes
        self.tombstone = tombstone
        self.created: set[K] = set()

    def put(self, key: K, value: V, *, created: bool) -> None:
        """Stage a row; ``created`` says the store cannot have it yet."""
        if created and key not in self.changes:
            self.created.add(key)
        self.changes[key] = value

    def delete(self, key: K) -> None:
        if key in self.created:
            self.created.discard(key)
            del self.changes[key]
        else:
            self.changes[key] = self.tombstone


class Stage:
    """The batch being staged by one iteration.

    Args:
        group: the consumer group whose offsets the batch commits.
        budget: how many eager step results may be applied on the spot (the rest
            become outcomes of this batch), and how many reported outcomes the batch
            applies, each: bounds a process that loops over trivial steps forever.
    """

    def __init__(self, group: str, budget: int) -> None:
        self.batch = Batch(group)
        self.work: Staged[str, WorkRow | None] = Staged(self.batch.work, None)
        self.waits: Staged[WaitRow, bool] = Staged(self.batch.waits, False)
        self.inbox: Staged[str, InboxRow | None] = Staged(self.batch.inbox, None)
        self.inline_budget = budget
        self.outcome_budget = budget
        # (process, event source, event id) -> the ids its instance may have
        self.trigger_ids: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.existing: set[str] = set()  # of those, instances already in the store
        self.snapshots: dict[str, InstanceSnapshot] = {}  # evicted instances, read in bulk
        self.dirty: dict[str, Live] = {}  # instances whose rows this batch writes
        # what ``runtime/decoding.py`` made of the consumed records, shared by every
        # participant: envelopes by (partition, first offset, count)
        self.decoded: dict[tuple[int, int, int], list[Envelope | MalformedEvent]] = {}

    def consumed(self) -> None:
        """Every participant has consumed the records read: what was decoded of them
        for sharing (``runtime/decoding.py``) is let go."""
        self.decoded.clear()

    def put_state(self, namespace: str, key: bytes, value: bytes) -> None:
        """Stage a keyed-state entry (``runtime/keyed.py``), committed with this batch.

        Raises:
            TypeError: the namespace is not text, or the key or value not ``bytes`` (an
                ``int`` would be stored as that many NUL bytes, a ``bytearray`` cannot be
                a key).
        """
        _check_entry(namespace, key)
        if type(value) is not bytes:
            raise TypeError(f"a keyed-state value is bytes, not {type(value).__name__}")
        self.batch.state[(namespace, key)] = value

    def delete_state(self, namespace: str, key: bytes) -> None:
        """Stage the deletion of a keyed-state entry (a tombstone in the store).

        Raises:
            TypeError: as for :meth:`put_state`.
        """
        _check_entry(namespace, key)
        self.batch.state[(namespace, key)] = None


def _check_entry(namespace: str, key: bytes) -> None:
    if type(namespace) is not str:
        raise TypeError(f"a keyed-state namespace is str, not {type(namespace).__name__}")
    if type(key) is not bytes:
        raise TypeError(f"a keyed-state key is bytes, not {type(key).__name__}")
