"""One conformance suite for every backend's log and store: memory, SQLite and Kafka.

Where a backend declares a capability false (``Backend.capabilities``), the test asserts
what it declares instead. Keyed state has its own module (``test_keyed_state.py``).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from overture.backends import open_backend
from overture.backends.kafka.changelog import records_of, restore
from overture.errors import ConfigError, EngineBusy
from overture.ports import (
    Batch,
    Capabilities,
    DeadLetter,
    InboxRow,
    InstanceRow,
    NewRecord,
    StateView,
    WaitRow,
    WorkRow,
    partition_for,
)

from .conftest import Subject, data, event


def row(iid: str, status: str = "running", **kw: object) -> InstanceRow:
    base: dict[str, object] = dict(
        id=iid,
        process="p",
        version=1,
        key=f"k-{iid}",
        status=status,
        partition=0,
        created=1.0,
        updated=2.0,
        trigger_id=f"t-{iid}",
    )
    base.update(kw)
    return InstanceRow(**base)  # type: ignore[arg-type]


def views(subject: Subject) -> list[StateView]:
    """What the engine committed to, and what clients read (Kafka: followed from the
    changelog): the same rows."""
    subject.settle()
    return [subject.engine().store, subject.backend.store]


def test_append_assigns_dense_offsets_per_partition_by_key(subject: Subject) -> None:
    log = subject.backend.log
    assert log.partitions == 4
    positions = log.append(
        [NewRecord("a", event(1)), NewRecord("a", event(2)), NewRecord("b", event(3))]
    )
    assert positions[0] is not None and positions[1] is not None
    assert positions[0][0] == positions[1][0]  # same key, same partition
    assert positions[1][1] == positions[0][1] + 1
    part = positions[0][0]
    assert [data(r.value) for r in log.read(part, 0, 10) if r.key == "a"] == [1, 2]
    assert log.end_offset(part) >= 2
    assert log.read(part, log.end_offset(part), 10) == []


def test_append_deduplicates_event_ids_as_declared_and_finds_them(subject: Subject) -> None:
    log = subject.backend.log
    first = log.append([NewRecord("k", event(1, "e1"), event_id="e1")])
    again = log.append(
        [NewRecord("k", event(2, "e1"), event_id="e1"), NewRecord("k", event(3, "e2"), "e2")]
    )
    assert first[0] is not None and again[1] is not None
    if subject.backend.capabilities.dedups_event_ids:
        assert again[0] is None
    else:  # appended again: the engines start one instance per trigger id regardless
        assert again[0] is not None and again[0] != first[0]
    # found whether by an index or (finds_events_by_id False) by reading the whole log
    found = subject.backend.log.find_event("e1")
    assert found is not None and data(found.value) == 1
    assert log.find_event("nope") is None


def test_an_event_id_repeated_in_one_append_or_commit_is_written_once(subject: Subject) -> None:
    if not subject.backend.capabilities.dedups_event_ids:
        pytest.skip("this backend appends a repeated id again (declared)")
    log = subject.backend.log
    out = log.append(
        [
            NewRecord("k", event(1, "r1"), event_id="r1"),
            NewRecord("k", event(2, "r1"), event_id="r1"),  # the same id: not written
            NewRecord("k", event(3, "r2"), event_id="r2"),
        ]
    )
    assert out[0] is not None and out[1] is None
    assert out[2] == (out[0][0], out[0][1] + 1), "the offsets stay contiguous"
    # a commit written row by row (it carries keyed state) skips known ids the same way
    batch = Batch("g")
    batch.appends.extend(
        [NewRecord("k", event(4, "r2"), "r2", "t"), NewRecord("k", event(5, "r3"), "r3", "t")]
    )
    batch.state[("ns", b"key")] = b"value"
    subject.engine().store.commit(batch)
    records = log.read(out[0][0], out[0][1], 10)
    assert [data(r.value) for r in records] == [1, 3, 5]
    assert [r.offset for r in records] == [out[0][1] + i for i in range(3)]


def test_read_respects_offset_and_limit(subject: Subject) -> None:
    log = subject.backend.log
    log.append([NewRecord("k", event(i)) for i in range(10)])
    part = log.append([NewRecord("k", event(10))])[0]
    assert part is not None
    records = log.read(part[0], 3, 4)
    assert [r.offset for r in records] == [3, 4, 5, 6]
    assert [data(r.value) for r in records] == [3, 4, 5, 6]


def test_commit_applies_every_kind_of_change(subject: Subject) -> None:
    store = subject.engine().store
    wait = WaitRow("pay", "o1", "i1", 2)
    batch = Batch("g", offsets={0: 5, 1: 7})
    batch.appends.append(NewRecord("o1", event(0, "em-1"), "em-1", "order.shipped"))
    batch.instances["i1"] = row("i1", result={"a": 1})
    batch.instances["i2"] = row("i2", status="completed")
    batch.journal.append(("i1", 0, [{"k": "start"}, {"k": "cmd", "s": 1}]))
    batch.waits[wait] = True
    batch.work["i1:3"] = WorkRow("i1:3", "timer", 99.0, 1, "i1", 3)
    batch.inbox["i1:e"] = InboxRow("i1:e", "i1", "pay", "o1", b"raw", 3.0)
    batch.dead_letters["0:1"] = DeadLetter("0:1", 4.0, "bad", 0, "decode", None, None, b"?", 0, 1)
    store.commit(batch)

    subject.settle()  # Kafka: the appends become readable once the markers are written
    assert subject.backend.log.find_event("em-1") is not None
    for view in views(subject):
        assert view.offsets("g") == {0: 5, 1: 7}
        assert view.offsets("other") == {}
        got = view.instance("i1")
        assert got is not None and got.result == {"a": 1} and got.key == "k-i1"
        assert view.journal("i1") == [{"k": "start"}, {"k": "cmd", "s": 1}]
        assert view.waits() == [wait]
        assert [w.id for w in view.work()] == ["i1:3"]
        assert [r.value for r in view.snapshots(["i1"])["i1"].inbox] == [b"raw"]
        assert [d.id for d in view.dead_letters()] == ["0:1"]
        assert view.active_instances() == [("i1", "k-i1")]
        assert view.existing(["i1", "nope", "i2"]) == {"i1", "i2"}
        snaps = view.snapshots(["i1", "i2", "nope"])
        assert set(snaps) == {"i1", "i2"}
        assert snaps["i1"].row.result == {"a": 1}
        assert snaps["i1"].journal == [{"k": "start"}, {"k": "cmd", "s": 1}]
        assert [r.value for r in snaps["i1"].inbox] == [b"raw"]
        assert snaps["i2"].journal == [] and snaps["i2"].inbox == []
        assert view.existing([f"x{i}" for i in range(1200)] + ["i2"]) == {"i2"}  # > a chunk
        assert [r.id for r in view.instances(status="completed")] == ["i2"]
        assert [r.id for r in view.instances(process="p", limit=1)] == ["i1"]

    follow = Batch("g", offsets={0: 6})
    follow.journal.append(("i1", 2, [{"k": "res", "s": 1}]))
    follow.waits[wait] = False
    follow.work["i1:3"] = None
    follow.inbox["i1:e"] = None
    follow.dead_letters["0:1"] = None
    store.commit(follow)
    for view in views(subject):
        assert view.offsets("g") == {0: 6, 1: 7}
        assert view.journal("i1")[-1] == {"k": "res", "s": 1}
        assert len(view.journal("i1")) == 3
        assert view.waits() == [] and view.work() == []
        assert view.snapshots(["i1"])["i1"].inbox == []
        assert view.dead_letters() == []


AWKWARD = {
    "text": 'é\u2028"\\\n\t/\x00\U0001f600',
    "floats": [0.1, 1e-7, -0.0, 1.5e300, 1.0],
    "ints": [12345678901234567, -(2**63), 2**63 - 1],
    "nested": [[], {}, [None, True]],
}


def test_rows_round_trip_exactly(subject: Subject) -> None:
    """Values that a JSON path could bend: floats to the last bit, escapes, NUL, astral
    characters, string results that look like JSON, keys that look like numbers."""
    store = subject.engine().store
    stamps = [1764133200.0 + i * 0.000123456789 + 1 / 3 for i in range(50)]
    batch = Batch("g")
    for i, stamp in enumerate(stamps):
        iid = f"i{i}"
        result: object = [AWKWARD, "null", "", None, 0, i][i % 6]
        error = {"type": "X", "message": AWKWARD["text"]} if i % 7 == 0 else None
        batch.instances[iid] = row(
            iid,
            key=str(i),
            created=stamp,
            updated=stamp * 1.5,
            result=result,
            error=error,
            journal_len=i,
        )
        batch.journal.append((iid, 0, [{"k": "start", "t": stamp, "ev": AWKWARD}]))
        batch.waits[WaitRow("pay", str(i) if i % 2 else None, iid, i)] = True
        payload = None if i % 2 else f'{{"n":{i},"t":"{AWKWARD["text"]}"}}'.encode()
        batch.work[f"{iid}:w"] = WorkRow(f"{iid}:w", "timer", stamp, i, iid, i, "n", payload)
    store.commit(batch)
    for view in views(subject):
        assert sorted(view.work(), key=lambda w: w.id) == sorted(
            batch.work.values(),
            key=lambda w: w.id,  # type: ignore[union-attr]
        )
        for i, stamp in enumerate(stamps):
            got = view.instance(f"i{i}")
            assert got == batch.instances[f"i{i}"]
            assert view.journal(f"i{i}") == [{"k": "start", "t": stamp, "ev": AWKWARD}]
        assert sorted(view.waits(), key=lambda w: w.seq) == sorted(batch.waits, key=lambda w: w.seq)
    gone = Batch("g")
    for wait in list(batch.waits)[:25]:
        gone.waits[wait] = False
    store.commit(gone)
    for view in views(subject):
        assert len(view.waits()) == 25
    if subject.kind == "sqlite":  # stored as the bytes orjson writes (format 1)
        conn = sqlite3.connect(subject.url.removeprefix("sqlite:///"))
        blob, result = conn.execute(
            "SELECT j.entries, i.result FROM journal j JOIN instances i ON i.id = j.instance_id "
            "WHERE j.instance_id = 'i0'"
        ).fetchone()
        assert blob == orjson.dumps([{"k": "start", "t": stamps[0], "ev": AWKWARD}])
        assert result == orjson.dumps(AWKWARD)
        conn.close()


def test_committed_appends_continue_each_partition_and_skip_known_ids_as_declared(
    subject: Subject,
) -> None:
    log = subject.backend.log
    log.append([NewRecord("a", event(0, "known"), "known"), NewRecord("b", event(1))])
    ends = {p: log.end_offset(p) for p in range(log.partitions)}
    batch = Batch("g")
    batch.appends += [
        NewRecord("a", event(2, "e1"), "e1", "t"),
        NewRecord("b", event(3), None, "t"),
        NewRecord("a", event(4, "known"), "known", "t"),  # already in the log
        NewRecord("a", event(5, "e1"), "e1", "t"),  # twice in the batch
        NewRecord("c", event(6, "e2"), "e2", "t"),
        NewRecord("a", event(7, "e3"), "e3", "t"),
    ]
    subject.engine().store.commit(batch)
    subject.settle()  # Kafka: the appends become readable once the markers are written
    if subject.backend.capabilities.dedups_event_ids:  # skipped; the first one counts
        accepted = [("a", 2), ("b", 3), ("c", 6), ("a", 7)]
    else:
        accepted = [("a", 2), ("b", 3), ("a", 4), ("a", 5), ("c", 6), ("a", 7)]
    expected: dict[int, list[int]] = {}
    for key, n in accepted:
        expected.setdefault(partition_for(key, log.partitions), []).append(n)
    for part in range(log.partitions):
        got = [(r.offset, data(r.value)) for r in log.read(part, ends[part], 10)]
        assert [n for _, n in got] == expected.get(part, [])
        if subject.kind != "kafka":  # (a Kafka transaction's commit marker takes an offset)
            assert [o for o, _ in got] == [ends[part] + i for i in range(len(got))]
    known = log.find_event("known")
    assert known is not None and data(known.value) == 0
    e2 = log.find_event("e2")
    assert e2 is not None and data(e2.value) == 6

    if subject.kind == "kafka":
        return  # a Kafka log carries events; other bytes are dead-lettered (test_wire.py)
    # bytes that are not UTF-8 (a dead letter replayed) take the transaction path
    raw = Batch("g")
    raw.appends += [NewRecord("a", b"\xff\x00raw", "e4", "t"), NewRecord("a", b'{"n":8}', "e5")]
    subject.engine().store.commit(raw)
    part = partition_for("a", log.partitions)
    tail = [r.value for r in log.read(part, ends[part] + len(expected[part]), 10)]
    assert tail == [b"\xff\x00raw", b'{"n":8}']


def test_buffered_events_and_handler_runs_keep_their_bytes(subject: Subject) -> None:
    store = subject.engine().store
    raws = [b'{"a":"\xc3\xa9"}', b"\x00nul", b"\xff\xfe"]  # text, a NUL, not UTF-8
    batch = Batch("g")
    for i, raw in enumerate(raws):
        batch.instances[f"i{i}"] = row(f"i{i}")
        batch.inbox[f"i{i}:b"] = InboxRow(f"i{i}:b", f"i{i}", "pay", "k", raw, 1.5 + i / 3)
        batch.work[f"h{i}"] = WorkRow(f"h{i}", "handler", 2.0 + i / 7, 1, None, None, "h", raw)
    store.commit(batch)
    for view in views(subject):
        snaps = view.snapshots([f"i{i}" for i in range(len(raws))])
        for i in range(len(raws)):
            assert snaps[f"i{i}"].inbox == [batch.inbox[f"i{i}:b"]]
        assert sorted(view.work(), key=lambda w: w.id) == [batch.work[f"h{i}"] for i in range(3)]
    gone = Batch("g")
    for i in range(len(raws)):
        gone.inbox[f"i{i}:b"] = None
        gone.work[f"h{i}"] = None
    store.commit(gone)
    for view in views(subject):
        assert view.work() == []
        assert all(s.inbox == [] for s in view.snapshots(["i0", "i1", "i2"]).values())


def test_strings_with_nul_round_trip(subject: Subject) -> None:
    """A NUL ends a string in SQLite's JSON functions: such batches must still be exact."""
    store = subject.engine().store
    batch = Batch("g")
    batch.instances["i\x00x"] = row("i\x00x", key="A\x00B", result="r\x00")
    batch.waits[WaitRow("pay", "A\x00B", "i\x00x", 1)] = True
    batch.appends += [
        NewRecord("A\x00B", event(1, "evt\x00one"), "evt\x00one"),
        NewRecord("k", event(2, "evt\x00two"), "evt\x00two"),
    ]
    store.commit(batch)
    later = Batch("g")
    later.appends.append(NewRecord("A\x00B", event(3, "evt\x00three"), "evt\x00three"))
    store.commit(later)
    for view in views(subject):
        assert view.instance("i\x00x") == batch.instances["i\x00x"]
        assert view.waits() == [WaitRow("pay", "A\x00B", "i\x00x", 1)]
    for event_id, n in (("evt\x00one", 1), ("evt\x00two", 2), ("evt\x00three", 3)):
        found = subject.backend.log.find_event(event_id)
        assert found is not None and data(found.value) == n


def test_a_failing_sqlite_commit_changes_nothing(tmp_path: Path) -> None:
    """A commit that fails half-way (here: an unserializable result) rolls back whole.

    (The memory store applies plain objects and has no failure mode to exercise.)
    """
    broker = open_backend(f"sqlite:///{tmp_path / 'f.db'}")
    store = broker.store
    batch = Batch("g", offsets={0: 9})
    batch.appends.append(NewRecord("k", b"v", "should-not-exist"))
    batch.instances["ok"] = row("ok")
    batch.instances["bad"] = row("bad", result=object())
    with pytest.raises(TypeError):
        store.commit(batch)
    assert store.offsets("g") == {}
    assert store.instance("ok") is None
    assert broker.log.find_event("should-not-exist") is None

    # Failing inside the database, after some rows were written: a transaction (appends
    # and a dead letter force one) and a lone state statement both leave nothing behind.
    mixed = Batch("g", offsets={0: 9})
    mixed.appends.append(NewRecord("k", b"v", "should-not-exist"))
    mixed.instances["ok"] = row("ok")
    mixed.dead_letters["x"] = DeadLetter("x", 1.0, "r", 0, "decode", None, None, None, 0, 1)  # type: ignore[arg-type]
    lone = Batch("g", offsets={0: 9})
    lone.instances["ok"] = row("ok")
    lone.instances["bad"] = row("bad", status=None)
    for failing in (mixed, lone):
        with pytest.raises(sqlite3.IntegrityError):
            store.commit(failing)
        assert store.offsets("g") == {}
        assert store.instance("ok") is None
        assert broker.log.find_event("should-not-exist") is None
    broker.close()


def test_engines_are_woken_by_appends(subject: Subject) -> None:
    """The log an engine reads wakes it when a client appends (Kafka: when the group
    member fetched the record for the engine's partition)."""
    woke = threading.Event()
    log = subject.backend.log
    key = "k"
    engine = subject.engine(partition_for(key, log.partitions))
    unsubscribe = engine.log.subscribe(woke.set)
    try:
        log.append([NewRecord(key, event(1))])
        assert woke.wait(30.0)
    finally:
        unsubscribe()


def test_engine_lock_as_declared(subject: Subject) -> None:
    engine = subject.engine()
    release = engine.engine_lock()
    if subject.backend.capabilities.local_lock:
        with pytest.raises(EngineBusy):
            engine.engine_lock()
    else:  # the group's assignment is the claim: nothing more to take
        engine.engine_lock()()
    release()
    engine.engine_lock()()


def test_capabilities_are_declared_and_shared_by_the_engine_side(subject: Subject) -> None:
    caps = subject.backend.capabilities
    assert isinstance(caps, Capabilities)
    assert subject.engine().capabilities == caps
    assert caps.partitioned == (subject.kind == "kafka")
    assert caps.commit == ("inline" if subject.kind == "memory" else "thread")
    assert subject.engine().owned == (None if not caps.partitioned else [0, 4])


def test_sqlite_is_shared_across_processes(tmp_path: Path) -> None:
    """Another process appends while we hold the engine lock; we see and are woken."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    broker = open_backend(url, partitions=2)
    release = broker.engine_lock()
    woke = threading.Event()
    unsubscribe = broker.log.subscribe(woke.set)
    script = (
        "import sys\n"
        "from overture.backends import open_backend\n"
        "from overture.ports import NewRecord\n"
        "from overture.errors import EngineBusy\n"
        f"b = open_backend({url!r})\n"
        "b.log.append([NewRecord('k', b'from-child', 'child-1')])\n"
        "try:\n    b.engine_lock()\nexcept EngineBusy:\n    sys.exit(3)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], timeout=30)
        assert result.returncode == 3  # the child could append but not claim the engine
        assert woke.wait(2.0)
        found = broker.log.find_event("child-1")
        assert found is not None and found.value == b"from-child"
    finally:
        unsubscribe()
        release()
        broker.close()


def test_sqlite_keeps_its_partition_count_and_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    open_backend(f"sqlite:///{path}", partitions=3).close()
    reopened = open_backend(f"sqlite:///{path}", partitions=8)
    assert reopened.log.partitions == 3
    reopened.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not an Overture database"):
        open_backend(f"sqlite:///{junk}")
    with pytest.raises(ConfigError, match="does not exist"):
        open_backend(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(ConfigError, match="unknown backend URL"):
        open_backend("postgres://x")


KAFKA_LETTER = DeadLetter(
    "1:7",
    4.5,
    "not JSON: unexpected character: line 1 column 1 (char 0)",
    0,
    "decode",
    None,
    None,
    b"\xc3\x28\x00 junk",
    1,
    7,
    raw_key=b"\xff\x00\xfe",
    headers=(
        ("ce_type", b"order.\xffplaced"),
        ("x-null", None),
        ("x-empty", b""),
        ("dup", b"1"),
        ("dup", b"2"),
    ),
)
"""A dead letter of a Kafka record: key, headers and value as they arrived, not UTF-8."""
PLAIN_LETTER = DeadLetter("0:3", 5.0, "not JSON", 0, "decode", None, "k", b"\x80\x00", 0, 3)


def test_dead_letters_keep_the_bytes_that_arrived(subject: Subject) -> None:
    """Record key, headers (order, repeats, null values) and value, byte for byte."""
    batch = Batch("g")
    batch.dead_letters = {KAFKA_LETTER.id: KAFKA_LETTER, PLAIN_LETTER.id: PLAIN_LETTER}
    subject.engine().store.commit(batch)
    for view in views(subject):
        letters = [KAFKA_LETTER, PLAIN_LETTER]
        if view is subject.backend.store and subject.backend.capabilities.partitioned:
            # clients see where each letter lives: the partition whose engine keeps it
            letters = [replace(d, partition=0) for d in letters]
        assert view.dead_letters() == letters
        assert view.dead_letter(KAFKA_LETTER.id) == letters[0]
        assert view.dead_letter(PLAIN_LETTER.id) == letters[1]


def test_the_kafka_changelog_keeps_the_bytes_of_dead_letters() -> None:
    batch = Batch("g")
    batch.dead_letters = {KAFKA_LETTER.id: KAFKA_LETTER, PLAIN_LETTER.id: PLAIN_LETTER}
    assert restore(records_of(batch)).dead_letters() == [KAFKA_LETTER, PLAIN_LETTER]
    # a letter written before raw_key and headers existed (ten fields) still restores
    old = (b'["d","0:1"]', orjson.dumps(["0:1", 1.0, "bad", 0, "decode", None, "k", "Pw==", 0, 1]))
    (letter,) = restore([old]).dead_letters()
    assert letter == DeadLetter("0:1", 1.0, "bad", 0, "decode", None, "k", b"?", 0, 1)


def test_a_database_from_before_raw_keys_and_headers_opens_and_keeps_its_letters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    open_backend(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)  # the dlq table as it was
    conn.executescript(
        """
        DROP TABLE dlq;
        CREATE TABLE dlq(
          id TEXT PRIMARY KEY, created REAL NOT NULL, reason TEXT NOT NULL,
          attempts INTEGER NOT NULL, source TEXT NOT NULL, etype TEXT, key TEXT,
          value BLOB NOT NULL, part INTEGER, off INTEGER);
        INSERT INTO dlq VALUES ('0:1', 1.0, 'bad', 0, 'decode', NULL, 'k', X'3F', 0, 1);
        """
    )
    conn.close()
    broker = open_backend(f"sqlite:///{path}")
    try:
        old = DeadLetter("0:1", 1.0, "bad", 0, "decode", None, "k", b"?", 0, 1)
        assert broker.store.dead_letters() == [old]
        batch = Batch("g")
        batch.dead_letters[KAFKA_LETTER.id] = KAFKA_LETTER
        broker.store.commit(batch)
        assert broker.store.dead_letters() == [old, KAFKA_LETTER]
    finally:
        broker.close()
