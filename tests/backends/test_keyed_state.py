"""Keyed state (``Batch.state``; ``get`` / ``scan``) on every backend: committed with the
rest of a batch, read by clients and by the engine, kept across a reopen (Kafka: a
restore from the changelog), bytes kept exactly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from overture.backends import open_backend
from overture.backends.kafka.changelog import records_of, restore
from overture.errors import BrokerUnavailable
from overture.ports import Batch, DeadLetter, InstanceRow, NewRecord, StateView

from .conftest import Subject, event

AWKWARD_KEYS = [b"", b"\x00", b"\x00\x00", b"a\x00b", b"\xff", b"\xff\xfe\x00", b"\x80abc", b"z"]
"""Keys SQLite's text functions or a NUL-terminated API would bend: empty, NUL, bytes
that are no UTF-8, the highest byte (the end of a prefix range)."""


def _commit(subject: Subject, batch: Batch) -> None:
    subject.engine().store.commit(batch)


def _views(subject: Subject) -> list[StateView]:
    """The engine's store, the client's view, and a freshly opened one: all agree."""
    subject.settle()
    return [subject.engine().store, subject.backend.store, subject.reopened()]


def test_put_get_delete(subject: Subject) -> None:
    batch = Batch("g")
    batch.state[("counts", b"a")] = b"1"
    batch.state[("counts", b"b")] = b"2"
    batch.state[("other", b"a")] = b"elsewhere"
    _commit(subject, batch)
    for view in _views(subject):
        assert view.get("counts", b"a") == b"1"
        assert view.get("counts", b"b") == b"2"
        assert view.get("other", b"a") == b"elsewhere"  # namespaces do not mix
        assert view.get("counts", b"c") is None
        assert view.get("nowhere", b"a") is None

    later = Batch("g")
    later.state[("counts", b"a")] = b"10"  # overwritten
    later.state[("counts", b"b")] = None  # a tombstone deletes
    later.state[("counts", b"never")] = None  # deleting what is not there is no error
    _commit(subject, later)
    for view in _views(subject):
        assert view.get("counts", b"a") == b"10"
        assert view.get("counts", b"b") is None
        assert view.scan("counts") == [(b"a", b"10")]
        assert view.get("other", b"a") == b"elsewhere"


def test_scan_is_ordered_by_key_bytes_and_filters_by_prefix(subject: Subject) -> None:
    batch = Batch("g")
    keys = [b"w:2", b"w:10", b"w:1", b"x", b"w", b"v\xff", b"w\xff\xff", b"w\xff"]
    for i, key in enumerate(keys):
        batch.state[("win", key)] = str(i).encode()
    batch.state[("win2", b"w:1")] = b"other namespace"
    _commit(subject, batch)
    value = {key: str(i).encode() for i, key in enumerate(keys)}
    for view in _views(subject):
        assert view.scan("win") == [(k, value[k]) for k in sorted(keys)]
        assert view.scan("win", b"w:") == [(k, value[k]) for k in (b"w:1", b"w:10", b"w:2")]
        assert view.scan("win", b"w:1") == [(k, value[k]) for k in (b"w:1", b"w:10")]
        # a prefix ending in 0xff: the range's end must carry into the byte before it
        assert view.scan("win", b"w\xff") == [(k, value[k]) for k in (b"w\xff", b"w\xff\xff")]
        assert view.scan("win", b"\xff") == []
        assert view.scan("win", b"w:3") == []
        assert view.scan("none") == []


def test_binary_keys_and_values_round_trip_exactly(subject: Subject) -> None:
    batch = Batch("g")
    values = {key: b"\x00v\xff" + key + b"\x00" for key in AWKWARD_KEYS}
    values[b"z"] = b""  # an empty value is a value, not a tombstone
    for key, value in values.items():
        batch.state[("bin\x00ns", key)] = value
    _commit(subject, batch)
    for view in _views(subject):
        for key, value in values.items():
            assert view.get("bin\x00ns", key) == value
        assert view.scan("bin\x00ns") == sorted(values.items())
        assert view.scan("bin\x00ns", b"\x00") == sorted(
            (k, v) for k, v in values.items() if k.startswith(b"\x00")
        )
        assert view.get("bin", b"z") is None  # the namespace is not cut at its NUL


def test_state_commits_with_the_rest_of_the_batch(subject: Subject) -> None:
    """One batch: offsets, an instance, an appended event and state, all visible at once."""
    batch = Batch("g", offsets={0: 3})
    batch.appends.append(NewRecord("k", event(1, "with-state"), "with-state", "conf.n"))
    batch.instances["i1"] = _row("i1")
    batch.state[("leases", b"task-1")] = b"worker-7"
    _commit(subject, batch)
    for view in _views(subject):
        assert view.offsets("g") == {0: 3}
        assert view.instance("i1") is not None
        assert view.get("leases", b"task-1") == b"worker-7"
    assert subject.backend.log.find_event("with-state") is not None


def test_state_survives_a_restore(subject: Subject) -> None:
    """Kafka: the partition's local state rebuilt from the changelog (tombstones
    applied); the embedded backends: the same committed rows."""
    first = Batch("g")
    first.state[("s", b"kept")] = b"1"
    first.state[("s", b"gone")] = b"2"
    _commit(subject, first)
    second = Batch("g")
    second.state[("s", b"gone")] = None
    second.state[("s", b"kept")] = b"3"
    _commit(subject, second)
    engine = subject.engine()
    engine.reload()
    assert engine.store.scan("s") == [(b"kept", b"3")]
    assert subject.reopened().scan("s") == [(b"kept", b"3")]


def test_a_failing_commit_leaves_no_state(subject: Subject) -> None:
    """A commit that fails leaves none of the batch's state behind, in the engine's store
    or in what a restore reads. (The memory store applies plain objects and has no
    failure mode to exercise: it is left out, as in the row-level test.)"""
    if subject.kind == "memory":
        assert subject.capabilities.commit == "inline"
        return
    batch = Batch("g", offsets={0: 9})
    batch.state[("s", b"before")] = b"x"
    batch.instances["ok"] = _row("ok")
    if subject.kind == "sqlite":
        # fails inside the transaction, after the state rows were written (row path)
        batch.dead_letters["x"] = DeadLetter("x", 1.0, "r", 0, "decode", None, None, None, 0, 1)  # type: ignore[arg-type]
        expected: type[Exception] = sqlite3.IntegrityError
    else:
        batch.instances["bad"] = _row("bad", result=object())  # fails in the transaction
        expected = BrokerUnavailable
    with pytest.raises(expected):
        _commit(subject, batch)
    engine = subject.engine()
    assert engine.store.get("s", b"before") is None
    engine.reload()
    for view in _views(subject):
        assert view.get("s", b"before") is None
        assert view.instance("ok") is None
        assert view.offsets("g") == {}


def test_a_database_from_before_keyed_state_gets_the_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    open_backend(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE state")  # as a file of the previous release
    conn.close()
    backend = open_backend(f"sqlite:///{path}")
    try:
        assert backend.store.get("s", b"k") is None
        batch = Batch("g")
        batch.state[("s", b"k")] = b"v"
        backend.store.commit(batch)  # type: ignore[attr-defined]  # (the engine side)
        assert backend.store.get("s", b"k") == b"v"
        assert {r[0] for r in sqlite3.connect(path).execute("PRAGMA table_info(state)")} == {
            0,
            1,
            2,
        }
    finally:
        backend.close()


def test_the_changelog_carries_state_by_namespace_with_tombstones() -> None:
    """One changelog kind for every namespace, keyed by (namespace, key), so compaction
    keeps each entry's newest record; a tombstone deletes it."""
    batch = Batch("g")
    batch.state[("a", b"\x00k")] = b"\xffv"
    batch.state[("b", b"\x00k")] = b""
    batch.state[("a", b"gone")] = None
    records = records_of(batch)
    keys = [key for key, _ in records]
    assert len(set(keys)) == 3  # (namespace, key) decides the record key
    assert dict(records)[keys[2]] is None  # the tombstone is a null value
    restored = restore(records)
    assert restored.scan("a") == [(b"\x00k", b"\xffv")]
    assert restored.get("b", b"\x00k") == b""
    # a later write of the same entry has the same record key: compaction keeps it only
    again = Batch("g")
    again.state[("a", b"\x00k")] = None
    (record,) = records_of(again)
    assert record == (keys[0], None)
    assert restore([*records, record]).scan("a") == []


def _row(iid: str, **kw: object) -> InstanceRow:
    base: dict[str, object] = dict(
        id=iid,
        process="p",
        version=1,
        key=f"k-{iid}",
        status="running",
        partition=0,
        created=1.0,
        updated=2.0,
        trigger_id=f"t-{iid}",
    )
    base.update(kw)
    return InstanceRow(**base)  # type: ignore[arg-type]


def test_awkward_keys_of_a_plain_namespace_are_written_and_deleted_exactly(
    subject: Subject,
) -> None:
    """A namespace without a NUL takes SQLite's state document (the bytes beside it as one
    parameter, the document saying where each key and value is): empty keys, empty
    values, NULs and bytes that are no UTF-8 are written and deleted exactly."""
    batch = Batch("g")
    values = {key: b"\x00v\xff" + key for key in AWKWARD_KEYS}
    values[b"z"] = b""
    for key, value in values.items():
        batch.state[("plain", key)] = value
    _commit(subject, batch)
    later = Batch("g")
    for key in (b"", b"\x00", b"\xff"):
        later.state[("plain", key)] = None
    later.state[("plain", b"a\x00b")] = b""
    _commit(subject, later)
    expected = {k: v for k, v in values.items() if k not in (b"", b"\x00", b"\xff")}
    expected[b"a\x00b"] = b""
    for view in _views(subject):
        assert view.scan("plain") == sorted(expected.items())
        assert view.get("plain", b"") is None and view.get("plain", b"z") == b""
