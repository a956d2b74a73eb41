"""The state changelog: a batch's state changes as compacted-topic records, and back.

Each row of a partition's state is one record of the changelog partition with the same
number, keyed by what identifies the row, so that log compaction keeps exactly the latest
state (a deleted row is a tombstone). Restoring a partition replays its changelog
partition into a fresh :class:`~overture.backends.memory.MemoryState`, the Kafka Streams
way.

Keys are JSON arrays (``["i", id]``, ``["w", type, key, instance, seq]`` …), so no
separator character can collide with user data. Journal entries are append-only chunks
keyed by their start position: applying them in position order rebuilds the journal.

Keyed state (``Batch.state``) is one kind for every namespace: ``["s", namespace,
base64(key)]`` keys a record whose value is the entry's bytes as they are (a tombstone
deletes it), so new state needs no new kind and compaction keeps each entry's newest.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from ...ports import Batch, DeadLetter, InboxRow, InstanceRow, WaitRow, WorkRow
from ..memory import MemoryState

ChangelogRecord = tuple[bytes, bytes | None]
"""(key, value); a ``None`` value is a tombstone."""


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


_DL_VALUE = DeadLetter.__slots__.index("value")
_DL_RAW_KEY = DeadLetter.__slots__.index("raw_key")
_DL_HEADERS = DeadLetter.__slots__.index("headers")


def _dead_letter_fields(fields: list[Any]) -> list[Any]:
    """A dead letter's changelog fields decoded; a record written before ``raw_key`` and
    ``headers`` existed has fewer fields, and the letter gets their defaults."""
    fields[_DL_VALUE] = _unb64(fields[_DL_VALUE])
    if len(fields) > _DL_RAW_KEY:
        fields[_DL_RAW_KEY] = _unb64(fields[_DL_RAW_KEY])
    if len(fields) > _DL_HEADERS and fields[_DL_HEADERS] is not None:
        fields[_DL_HEADERS] = tuple((n, _unb64(v)) for n, v in fields[_DL_HEADERS])
    return fields


def records_of(batch: Batch) -> list[ChangelogRecord]:
    """The changelog records of one partition's batch (its appends are not state)."""
    dumps = orjson.dumps
    out: list[ChangelogRecord] = []
    # One record per (group, logical partition): a batch that consumed only some of the
    # engine's logical partitions (only the internal topic's, say) must not hide, once
    # compacted or restored, the offset it did not move.
    for p, o in batch.offsets.items():
        out.append((dumps(["o", batch.group, p]), dumps({str(p): o})))
    for iid, row in batch.instances.items():
        out.append((dumps(["i", iid]), dumps([getattr(row, f) for f in InstanceRow.__slots__])))
    for iid, pos, entries in batch.journal:
        out.append((dumps(["j", iid, pos]), dumps(entries)))
    for wait, present in batch.waits.items():
        key = dumps(["w", wait.event_type, wait.key, wait.instance_id, wait.seq])
        out.append((key, dumps(wait.home) if present else None))
    for work_id, work in batch.work.items():
        value = None
        if work is not None:
            fields = [getattr(work, f) for f in WorkRow.__slots__]
            fields[-1] = _b64(work.payload)
            value = dumps(fields)
        out.append((dumps(["k", work_id]), value))
    for inbox_id, inbox in batch.inbox.items():
        value = None
        if inbox is not None:
            value = dumps(
                [
                    *(getattr(inbox, f) for f in InboxRow.__slots__[:4]),
                    _b64(inbox.value),
                    inbox.received,
                ]
            )
        out.append((dumps(["b", inbox_id]), value))
    for dl_id, letter in batch.dead_letters.items():
        value = None
        if letter is not None:
            fields = [getattr(letter, f) for f in DeadLetter.__slots__]
            fields[_DL_VALUE] = _b64(letter.value)
            fields[_DL_RAW_KEY] = _b64(letter.raw_key)
            if letter.headers is not None:
                fields[_DL_HEADERS] = [[n, _b64(v)] for n, v in letter.headers]
            value = dumps(fields)
        out.append((dumps(["d", dl_id]), value))
    for (namespace, key), state in batch.state.items():
        out.append((state_key(namespace, key), None if state is None else bytes(state)))
    return out


def state_key(namespace: str, key: bytes) -> bytes:
    """The changelog key of a keyed-state entry (the same bytes for the same entry, so
    that compaction keeps only its newest value)."""
    return orjson.dumps(["s", namespace, base64.b64encode(key).decode()])


def restore(records: Iterable[ChangelogRecord], state: MemoryState | None = None) -> MemoryState:
    """Apply changelog records (oldest first) to ``state`` (a fresh one by default):
    a full restore, or the next increment of a reader that follows the changelog."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        latest.pop(key, None)  # keep the order of the latest write
        latest[key] = value
    state = state or MemoryState()
    batch = Batch("")
    chunks: list[tuple[str, int, list[dict[str, Any]]]] = []
    for raw_key, raw in latest.items():
        key = orjson.loads(raw_key)
        kind = key[0]
        if kind == "s":  # the value is the entry's own bytes, not JSON
            batch.state[(key[1], base64.b64decode(key[2]))] = raw
            continue
        value = None if raw is None else orjson.loads(raw)
        if kind == "o":
            if value is not None:
                state.apply(Batch(key[1], offsets={int(p): o for p, o in value.items()}))
        elif kind == "i":
            if value is not None:
                batch.instances[key[1]] = InstanceRow(*value)
        elif kind == "j":
            if value is not None:
                chunks.append((key[1], key[2], value))
        elif kind == "w":
            batch.waits[WaitRow(key[1], key[2], key[3], key[4], value)] = raw is not None
        elif kind == "k":
            if value is not None:
                value[-1] = _unb64(value[-1])
            batch.work[key[1]] = None if value is None else WorkRow(*value)
        elif kind == "b":
            if value is not None:
                value[4] = _unb64(value[4])
            batch.inbox[key[1]] = None if value is None else InboxRow(*value)
        elif kind == "d":
            letter = None if value is None else DeadLetter(*_dead_letter_fields(value))
            batch.dead_letters[key[1]] = letter
    chunks.sort(key=lambda c: (c[0], c[1]))
    batch.journal = chunks
    state.apply(batch)
    return state
