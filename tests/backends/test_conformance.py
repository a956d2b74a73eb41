"""One conformance suite for every backend's Log and Store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from overture.backends import open_backend
from overture.backends.kafka.changelog import records_of, restore
from overture.errors import ConfigError, EngineBusy
from overture.ports import (
    Backend,
    Batch,
    DeadLetter,
    InboxRow,
    InstanceRow,
    NewRecord,
    WaitRow,
    WorkRow,
    partition_for,
)


@pytest.fixture(params=["memory", "sqlite"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        b = open_backend(f"memory://conf-{tmp_path.name}", partitions=4)
    else:
        b = open_backend(f"sqlite:///{tmp_path / 'c.db'}", partitions=4)
    yield b
    b.close()


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


def test_append_assigns_dense_offsets_per_partition_by_key(broker: Backend) -> None:
    log = broker.log
    assert log.partitions == 4
    positions = log.append([NewRecord("a", b"1"), NewRecord("a", b"2"), NewRecord("b", b"3")])
    assert positions[0] is not None and positions[1] is not None
    assert positions[0][0] == positions[1][0]  # same key, same partition
    assert positions[1][1] == positions[0][1] + 1
    part = positions[0][0]
    assert [r.value for r in log.read(part, 0, 10) if r.key == "a"] == [b"1", b"2"]
    assert log.end_offset(part) >= 2
    assert log.read(part, log.end_offset(part), 10) == []


def test_append_deduplicates_event_ids_and_finds_them(broker: Backend) -> None:
    log = broker.log
    first = log.append([NewRecord("k", b"x", event_id="e1")])
    again = log.append([NewRecord("k", b"y", event_id="e1"), NewRecord("k", b"z", "e2")])
    assert first[0] is not None
    assert again[0] is None and again[1] is not None
    found = log.find_event("e1")
    assert found is not None and found.value == b"x"
    assert log.find_event("nope") is None


def test_read_respects_offset_and_limit(broker: Backend) -> None:
    log = broker.log
    log.append([NewRecord("k", str(i).encode()) for i in range(10)])
    part = log.append([NewRecord("k", b"last")])[0]
    assert part is not None
    records = log.read(part[0], 3, 4)
    assert [r.offset for r in records] == [3, 4, 5, 6]
    assert [r.value for r in records] == [b"3", b"4", b"5", b"6"]


def test_commit_applies_every_kind_of_change(broker: Backend) -> None:
    store = broker.store
    wait = WaitRow("pay", "o1", "i1", 2)
    batch = Batch("g", offsets={0: 5, 1: 7})
    batch.appends.append(NewRecord("o1", b"emitted", "em-1", "order.shipped"))
    batch.instances["i1"] = row("i1", result={"a": 1})
    batch.instances["i2"] = row("i2", status="completed")
    batch.journal.append(("i1", 0, [{"k": "start"}, {"k": "cmd", "s": 1}]))
    batch.waits[wait] = True
    batch.work["i1:3"] = WorkRow("i1:3", "timer", 99.0, 1, "i1", 3)
    batch.inbox["i1:e"] = InboxRow("i1:e", "i1", "pay", "o1", b"raw", 3.0)
    batch.dead_letters["0:1"] = DeadLetter("0:1", 4.0, "bad", 0, "decode", None, None, b"?", 0, 1)
    store.commit(batch)

    assert store.offsets("g") == {0: 5, 1: 7}
    assert store.offsets("other") == {}
    assert broker.log.find_event("em-1") is not None
    got = store.instance("i1")
    assert got is not None and got.result == {"a": 1} and got.key == "k-i1"
    assert store.journal("i1") == [{"k": "start"}, {"k": "cmd", "s": 1}]
    assert store.waits() == [wait]
    assert [w.id for w in store.work()] == ["i1:3"]
    assert [r.value for r in store.snapshots(["i1"])["i1"].inbox] == [b"raw"]
    assert [d.id for d in store.dead_letters()] == ["0:1"]
    assert store.active_instances() == [("i1", "k-i1")]
    assert store.existing(["i1", "nope", "i2"]) == {"i1", "i2"}
    snaps = store.snapshots(["i1", "i2", "nope"])
    assert set(snaps) == {"i1", "i2"}
    assert snaps["i1"].row.result == {"a": 1}
    assert snaps["i1"].journal == [{"k": "start"}, {"k": "cmd", "s": 1}]
    assert [r.value for r in snaps["i1"].inbox] == [b"raw"]
    assert snaps["i2"].journal == [] and snaps["i2"].inbox == []
    assert store.existing([f"x{i}" for i in range(1200)] + ["i2"]) == {"i2"}  # > one chunk
    assert [r.id for r in store.instances(status="completed")] == ["i2"]
    assert [r.id for r in store.instances(process="p", limit=1)] == ["i1"]

    follow = Batch("g", offsets={0: 6})
    follow.journal.append(("i1", 2, [{"k": "res", "s": 1}]))
    follow.waits[wait] = False
    follow.work["i1:3"] = None
    follow.inbox["i1:e"] = None
    follow.dead_letters["0:1"] = None
    store.commit(follow)
    assert store.offsets("g") == {0: 6, 1: 7}
    assert store.journal("i1")[-1] == {"k": "res", "s": 1}
    assert len(store.journal("i1")) == 3
    assert store.waits() == [] and store.work() == [] and store.snapshots(["i1"])["i1"].inbox == []
    assert store.dead_letters() == []


AWKWARD = {
    "text": 'é\u2028"\\\n\t/\x00\U0001f600',
    "floats": [0.1, 1e-7, -0.0, 1.5e300, 1.0],
    "ints": [12345678901234567, -(2**63), 2**63 - 1],
    "nested": [[], {}, [None, True]],
}


def test_rows_round_trip_exactly(broker: Backend, tmp_path: Path) -> None:
    """Values that a JSON path could bend: floats to the last bit, escapes, NUL, astral
    characters, string results that look like JSON, keys that look like numbers."""
    store = broker.store
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
    assert sorted(store.work(), key=lambda w: w.id) == sorted(
        batch.work.values(), key=lambda w: w.id
    )  # type: ignore[union-attr]
    for i, stamp in enumerate(stamps):
        got = store.instance(f"i{i}")
        assert got == batch.instances[f"i{i}"]
        assert store.journal(f"i{i}") == [{"k": "start", "t": stamp, "ev": AWKWARD}]
    assert sorted(store.waits(), key=lambda w: w.seq) == sorted(batch.waits, key=lambda w: w.seq)
    gone = Batch("g")
    for wait in list(batch.waits)[:25]:
        gone.waits[wait] = False
    store.commit(gone)
    assert len(store.waits()) == 25
    if broker.url.startswith("sqlite:"):  # stored as the bytes orjson writes (format 1)
        conn = sqlite3.connect(broker.url.removeprefix("sqlite:///"))
        blob, result = conn.execute(
            "SELECT j.entries, i.result FROM journal j JOIN instances i ON i.id = j.instance_id "
            "WHERE j.instance_id = 'i0'"
        ).fetchone()
        assert blob == orjson.dumps([{"k": "start", "t": stamps[0], "ev": AWKWARD}])
        assert result == orjson.dumps(AWKWARD)
        conn.close()


def test_committed_appends_continue_each_partition_densely_and_skip_known_ids(
    broker: Backend,
) -> None:
    log, store = broker.log, broker.store
    log.append([NewRecord("a", b'{"n":0}', "known"), NewRecord("b", b'{"n":1}')])
    ends = {p: log.end_offset(p) for p in range(log.partitions)}
    batch = Batch("g")
    batch.appends += [
        NewRecord("a", b'{"n":2}', "e1", "t"),
        NewRecord("b", b'{"n":3}', None, "t"),
        NewRecord("a", b'{"n":4}', "known", "t"),  # already in the log: skipped
        NewRecord("a", b'{"n":5}', "e1", "t"),  # twice in the batch: the first one counts
        NewRecord("c", b'{"n":6}', "e2", "t"),
        NewRecord("a", b'{"n":7}', "e3", "t"),
    ]
    store.commit(batch)
    accepted = [("a", b'{"n":2}'), ("b", b'{"n":3}'), ("c", b'{"n":6}'), ("a", b'{"n":7}')]
    expected: dict[int, list[bytes]] = {}
    for key, value in accepted:
        expected.setdefault(partition_for(key, log.partitions), []).append(value)
    for part in range(log.partitions):
        got = [(r.offset, r.value) for r in log.read(part, ends[part], 10)]
        assert got == [(ends[part] + i, v) for i, v in enumerate(expected.get(part, []))]
    known = log.find_event("known")
    assert known is not None and known.value == b'{"n":0}'
    e2 = log.find_event("e2")
    assert e2 is not None and e2.value == b'{"n":6}'

    # bytes that are not UTF-8 (a dead letter replayed) take the transaction path
    raw = Batch("g")
    raw.appends += [NewRecord("a", b"\xff\x00raw", "e4", "t"), NewRecord("a", b'{"n":8}', "e5")]
    store.commit(raw)
    part = partition_for("a", log.partitions)
    tail = [r.value for r in log.read(part, ends[part] + len(expected[part]), 10)]
    assert tail == [b"\xff\x00raw", b'{"n":8}']


def test_buffered_events_and_handler_runs_keep_their_bytes(broker: Backend) -> None:
    store = broker.store
    raws = [b'{"a":"\xc3\xa9"}', b"\x00nul", b"\xff\xfe"]  # text, a NUL, not UTF-8
    batch = Batch("g")
    for i, raw in enumerate(raws):
        batch.instances[f"i{i}"] = row(f"i{i}")
        batch.inbox[f"i{i}:b"] = InboxRow(f"i{i}:b", f"i{i}", "pay", "k", raw, 1.5 + i / 3)
        batch.work[f"h{i}"] = WorkRow(f"h{i}", "handler", 2.0 + i / 7, 1, None, None, "h", raw)
    store.commit(batch)
    snaps = store.snapshots([f"i{i}" for i in range(len(raws))])
    for i in range(len(raws)):
        assert snaps[f"i{i}"].inbox == [batch.inbox[f"i{i}:b"]]
    assert sorted(store.work(), key=lambda w: w.id) == [batch.work[f"h{i}"] for i in range(3)]
    gone = Batch("g")
    for i in range(len(raws)):
        gone.inbox[f"i{i}:b"] = None
        gone.work[f"h{i}"] = None
    store.commit(gone)
    assert store.work() == []
    assert all(s.inbox == [] for s in store.snapshots(["i0", "i1", "i2"]).values())


def test_strings_with_nul_round_trip(broker: Backend) -> None:
    """A NUL ends a string in SQLite's JSON functions: such batches must still be exact."""
    store = broker.store
    batch = Batch("g")
    batch.instances["i\x00x"] = row("i\x00x", key="A\x00B", result="r\x00")
    batch.waits[WaitRow("pay", "A\x00B", "i\x00x", 1)] = True
    batch.appends += [
        NewRecord("A\x00B", b'{"n":1}', "evt\x00one"),
        NewRecord("k", b"2", "evt\x00two"),
    ]
    store.commit(batch)
    later = Batch("g")
    later.appends.append(NewRecord("A\x00B", b'{"n":3}', "evt\x00three"))
    store.commit(later)
    assert store.instance("i\x00x") == batch.instances["i\x00x"]
    assert store.waits() == [WaitRow("pay", "A\x00B", "i\x00x", 1)]
    for event_id, value in (
        ("evt\x00one", b'{"n":1}'),
        ("evt\x00two", b"2"),
        ("evt\x00three", b'{"n":3}'),
    ):
        found = broker.log.find_event(event_id)
        assert found is not None and found.value == value


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


def test_subscribers_are_woken_by_appends(broker: Backend) -> None:
    woke = threading.Event()
    unsubscribe = broker.log.subscribe(woke.set)
    try:
        broker.log.append([NewRecord("k", b"v")])
        assert woke.wait(2.0)
    finally:
        unsubscribe()


def test_engine_lock_is_exclusive(broker: Backend) -> None:
    release = broker.engine_lock()
    with pytest.raises(EngineBusy):
        broker.engine_lock()
    release()
    broker.engine_lock()()


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


def test_dead_letters_keep_the_bytes_that_arrived(broker: Backend) -> None:
    """Record key, headers (order, repeats, null values) and value, byte for byte."""
    batch = Batch("g")
    batch.dead_letters = {KAFKA_LETTER.id: KAFKA_LETTER, PLAIN_LETTER.id: PLAIN_LETTER}
    broker.store.commit(batch)
    assert broker.store.dead_letters() == [KAFKA_LETTER, PLAIN_LETTER]
    assert broker.store.dead_letter(KAFKA_LETTER.id) == KAFKA_LETTER
    assert broker.store.dead_letter(PLAIN_LETTER.id) == PLAIN_LETTER


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
