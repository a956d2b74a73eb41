"""The SQLite task queue beyond the port's conformance: its table on files from before
it, both commit paths, deadlines, the claim's index, and several processes' connections
(other backend objects on one file) sharing the queue."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson
import pytest

import overture as ov
from overture import protocol
from overture.backends.sqlite import SqliteBackend
from overture.backends.sqlite.tasks import _ANY, _CANDIDATES
from overture.codec import Codec
from overture.ports import Batch, DeadLetter, NewRecord
from overture.tasks import completed, parse_request

from ..tasks.attempts import attempt_record, publish, soon

CODEC = Codec()


def _open(path: Path) -> SqliteBackend:
    return SqliteBackend(f"sqlite:///{path}", str(path), 1)


def test_a_file_from_before_tasks_gets_the_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE tasks")  # as a file of the previous release
    conn.commit()
    conn.close()
    backend = _open(path)
    try:
        record = attempt_record()
        publish(backend, record)
        assert [t.id for t in backend.tasks.claim(["default"], "w", 1, 30.0)] == [record.id]
    finally:
        backend.close()


def test_attempts_commit_on_both_paths(tmp_path: Path) -> None:
    """The engine's batches go as one JSON document; one with a dead letter (or request
    bytes the document cannot carry) row by row: both publish and end attempts alike."""
    backend = _open(tmp_path / "paths.db")
    try:
        on_document = attempt_record(instance="doc", deadline=soon())
        on_rows = attempt_record(instance="rows", deadline=soon())
        publish(backend, on_document)
        batch = Batch("engine")
        batch.tasks[on_rows.id] = on_rows
        batch.dead_letters["d1"] = DeadLetter("d1", 1.0, "test", 1, "decode", None, None, b"\xff")
        backend.commit(batch)
        rows = backend._query("SELECT id, queue, request, deadline, ended FROM tasks ORDER BY n")
        assert rows == [(r.id, r.queue, r.request, r.deadline, 0) for r in (on_document, on_rows)]
        assert isinstance(rows[0][2], bytes)  # a BLOB, byte for byte, on both paths

        ending = Batch("engine")
        ending.tasks[on_document.id] = None
        backend.commit(ending)  # document path
        ending = Batch("engine")
        ending.tasks[on_rows.id] = None
        ending.dead_letters["d2"] = DeadLetter("d2", 1.0, "test", 1, "decode", None, None, b"")
        backend.commit(ending)  # row by row
        assert backend._query("SELECT ended FROM tasks ORDER BY n") == [(1,), (1,)]
        assert backend.tasks.claim(["default"], "w", 10, 30.0) == []
    finally:
        backend.close()


def test_an_attempt_past_its_deadline_is_not_claimed(tmp_path: Path) -> None:
    backend = _open(tmp_path / "deadline.db")
    try:
        late = attempt_record(instance="late", deadline=time.time() - 1)
        timely = attempt_record(instance="timely", deadline=soon())
        publish(backend, late, timely)
        assert [t.id for t in backend.tasks.claim(["default"], "w", 10, 30.0)] == [timely.id]
    finally:
        backend.close()


def test_claim_walks_the_index_of_open_attempts(tmp_path: Path) -> None:
    backend = _open(tmp_path / "index.db")
    try:
        batch = Batch("engine")
        for i in range(3000):
            record = attempt_record(instance=f"i{i}")
            batch.tasks[record.id] = record
        backend.commit(batch)
        ended = Batch("engine")
        for i in range(2990):
            ended.tasks[protocol.task_attempt_id(f"i{i}", 1, 1)] = None
        backend.commit(ended)
        for sql, args in ((_CANDIDATES, ("default", 0.0, 0.0, 1)), (_ANY, ("default", 0.0, 0.0))):
            plan = " ".join(
                str(row[-1]) for row in backend._query(f"EXPLAIN QUERY PLAN {sql}", args)
            )
            assert "USING INDEX tasks_open" in plan and "TEMP B-TREE" not in plan, plan
        started = time.perf_counter()
        got = backend.tasks.claim(["default"], "w", 100, 30.0)
        assert [t.id for t in got] == [
            protocol.task_attempt_id(f"i{i}", 1, 1) for i in range(2990, 3000)
        ]
        assert time.perf_counter() - started < 1.0
    finally:
        backend.close()


def test_workers_on_other_connections_share_the_queue(tmp_path: Path) -> None:
    """Like worker processes: each opens the file itself. The engine's doorbell rings a
    worker's registered bell when a commit publishes; a claim by one is seen by the
    other; a result written by one is on the engine's log."""
    path = tmp_path / "shared.db"
    engine = _open(path)
    engine_bell = engine.log.subscribe(lambda: None)  # bound, as a running engine's is
    first, second = _open(path), _open(path)
    woken = threading.Event()
    unsubscribe = first.tasks.subscribe(woken.set)
    try:
        time.sleep(1.2)  # registered and acknowledged
        woken.clear()
        record = attempt_record()
        publish(engine, record)
        assert woken.wait(5.0)
        (task,) = first.tasks.claim(["default"], "w1", 5, 30.0)
        assert second.tasks.claim(["default"], "w2", 5, 30.0) == []
        envelope, message = parse_request(CODEC, task.request)
        result = completed(CODEC, envelope, message, 42)
        assert second.tasks.finish(task.id, "w2", result) == "accepted"
        assert first.tasks.finish(task.id, "w1", result) == "ended"
        found = engine.log.find_event(protocol.task_result_id(record.id))
        assert found is not None
        assert orjson.loads(found.value)["data"]["output"] == 42
    finally:
        unsubscribe()
        engine_bell()
        for backend in (first, second, engine):
            backend.close()


def test_finish_is_one_transaction(tmp_path: Path) -> None:
    """A result the log refuses (here a trigger aborts the insert, as a full disk would
    halfway through) leaves the attempt open and its lease with its worker: nothing of
    the finish was kept, so the worker (or the next one) can finish it again."""
    path = tmp_path / "atomic.db"
    backend = _open(path)
    try:
        record = attempt_record()
        publish(backend, record)
        (task,) = backend.tasks.claim(["default"], "w1", 1, 30.0)
        envelope, message = parse_request(CODEC, task.request)
        result = completed(CODEC, envelope, message, "done")
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON log BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        conn.commit()
        with pytest.raises(sqlite3.DatabaseError):
            backend.tasks.finish(task.id, "w1", result)
        assert backend._query("SELECT ended, worker FROM tasks") == [(0, "w1")]
        assert backend.tasks.heartbeat(task.id, "w1", 30.0)
        conn.execute("DROP TRIGGER refuse")
        conn.commit()
        conn.close()
        assert backend.tasks.finish(task.id, "w1", result) == "accepted"
        assert backend.log.find_event(protocol.task_result_id(record.id)) is not None
    finally:
        backend.close()


def test_concurrent_finishes_share_transactions_and_each_gets_its_own_outcome(
    tmp_path: Path,
) -> None:
    """Finishes called at once are group-committed: duplicates in one group are told
    "ended" (one result per attempt on the log), and a result the log refuses fails its
    own caller only."""
    path = tmp_path / "group.db"
    backend = _open(path)
    try:
        records = [attempt_record(instance=f"g{i}") for i in range(24)]
        publish(backend, *records)
        claimed = backend.tasks.claim(["default"], "w", 24, 30.0)
        results = {}
        for task in claimed:
            envelope, message = parse_request(CODEC, task.request)
            results[task.id] = completed(CODEC, envelope, message, task.id)
        refused = records[5].id
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON log "
            f"WHEN NEW.event_id = '{protocol.task_result_id(refused)}' "
            "BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        conn.commit()
        conn.close()
        calls = [task_id for task_id in results for _ in range(3)]  # each three times
        outcomes: dict[str, list[str]] = {task_id: [] for task_id in results}
        errors: list[tuple[str, BaseException]] = []
        start = threading.Barrier(len(calls))

        def finish(task_id: str) -> None:
            start.wait()
            try:
                outcomes[task_id].append(backend.tasks.finish(task_id, "w", results[task_id]))
            except sqlite3.DatabaseError as error:
                errors.append((task_id, error))

        threads = [threading.Thread(target=finish, args=(t,)) for t in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [task_id for task_id, _ in errors] == [refused] * 3
        for task_id, got in outcomes.items():
            if task_id != refused:
                assert sorted(got) == ["accepted", "ended", "ended"], (task_id, got)
        on_log = [orjson.loads(r.value)["id"] for r in backend.log.read(0, 0, 1000)]
        assert sorted(on_log) == sorted(
            protocol.task_result_id(r.id) for r in records if r.id != refused
        )
        assert backend._query("SELECT ended FROM tasks WHERE id = ?", (refused,)) == [(0,)]
    finally:
        backend.close()


def test_claims_heartbeats_and_finishes_at_once_share_one_transaction(tmp_path: Path) -> None:
    """The writes that queue up while one transaction runs share the next one, whatever
    they are: a group of finishes, a heartbeat and another worker's claim is one
    transaction of a few statements, fsynced because it holds results, and each caller
    gets its own answer, as if its call had run alone."""
    path = tmp_path / "mixed.db"
    backend = _open(path)
    queue = backend.tasks
    try:
        records = [attempt_record(instance=f"m{i}") for i in range(23)]
        publish(backend, *records)
        held = queue.claim(["default"], "w1", 20, 30.0)  # the other 3 are left to claim
        results = {}
        for task in held:
            envelope, message = parse_request(CODEC, task.request)
            results[task.id] = completed(CODEC, envelope, message, task.id)
        first, over, beating, *finishing = [task.id for task in held]
        assert queue.finish(over, "w1", results[over]) == "accepted"  # over before the group
        statements: list[str] = []
        backend._conn.set_trace_callback(statements.append)
        answers: dict[str, object] = {}
        stray = NewRecord(  # a result for an attempt never published
            results[first].key,
            results[first].value,
            protocol.task_result_id("task:none:1:1"),
            results[first].event_type,
        )

        def call(name: str, fn: object, *args: object) -> None:
            answers[name] = fn(*args)  # type: ignore[operator]

        calls = [("lead", queue.finish, first, "w1", results[first])]
        calls += [(t, queue.finish, t, "w1", results[t]) for t in finishing]
        calls += [
            ("again", queue.finish, finishing[0], "w1", results[finishing[0]]),
            ("over", queue.finish, over, "w1", results[over]),
            ("unknown", queue.finish, "task:none:1:1", "w1", stray),
            ("beat", queue.heartbeat, beating, "w1", 30.0),
            ("claim", queue.claim, ["default"], "w2", 10, 30.0),
        ]
        threads = [threading.Thread(target=call, args=c) for c in calls]
        with backend._lock:  # the first finish leads and waits here; the others queue
            threads[0].start()
            while not queue._leading:
                time.sleep(0.001)
            for thread in threads[1:]:
                thread.start()
            while len(queue._queue) < len(calls) - 1:
                time.sleep(0.001)
        for thread in threads:
            thread.join(30)
        backend._conn.set_trace_callback(None)
        assert answers["lead"] == "accepted"
        assert all(answers[t] == "accepted" for t in finishing)
        assert answers["again"] == "ended"  # a second result of an attempt in one group
        assert answers["over"] == "ended"
        assert answers["unknown"] == "unknown"
        assert answers["beat"] is True
        claimed = answers["claim"]
        assert isinstance(claimed, list)
        assert sorted(t.id for t in claimed) == sorted(r.id for r in records[20:])
        begins = [i for i, sql in enumerate(statements) if sql == "BEGIN IMMEDIATE"]
        assert len(begins) == 2  # the leader's own finish, then all the others at once
        group = statements[begins[1] :]
        # the group's finishes look their attempts up and find the log's head once for
        # all of them, not once each (the trace shows each row of an executemany)
        lookups = [sql for sql in group if sql.startswith("SELECT") and "FROM tasks" in sql]
        assert len(lookups) == 2, lookups  # the finishes' look, the claim's walk
        assert sum(sql.startswith("SELECT max(id) FROM log") for sql in group) == 1
        assert "PRAGMA synchronous=NORMAL" not in statements  # results are fsynced
        on_log = {orjson.loads(r.value)["id"] for r in backend.log.read(0, 0, 1000)}
        assert on_log == {protocol.task_result_id(t) for t in [first, over, *finishing]}
    finally:
        backend.close()


def test_a_lease_alone_is_committed_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """A claim or a heartbeat alone commits at ``synchronous=NORMAL`` (a lease a crash
    loses only hands the attempt out again), a finish at ``FULL``, and the connection is
    left at ``FULL`` for the engine's commits."""
    path = tmp_path / "lease.db"
    backend = _open(path)
    try:
        publish(backend, attempt_record())
        statements: list[str] = []
        backend._conn.set_trace_callback(statements.append)
        (task,) = backend.tasks.claim(["default"], "w", 1, 30.0)
        assert backend.tasks.heartbeat(task.id, "w", 30.0)
        assert statements.count("PRAGMA synchronous=NORMAL") == 2
        assert backend._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        statements.clear()
        envelope, message = parse_request(CODEC, task.request)
        assert backend.tasks.finish(task.id, "w", completed(CODEC, envelope, message, 1)) == (
            "accepted"
        )
        assert "PRAGMA synchronous=NORMAL" not in statements
        assert backend._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        backend._conn.set_trace_callback(None)
        backend.close()


def test_a_finish_that_is_not_durable_is_committed_without_waiting_for_the_disk(
    tmp_path: Path,
) -> None:
    """``finish(durable=False)`` (a worker's) commits at ``synchronous=NORMAL``; a
    durable one (the HTTP API's) is fsynced."""
    backend = _open(tmp_path / "finish.db")
    try:
        publish(backend, attempt_record(seq=1), attempt_record(seq=2))
        first, second = backend.tasks.claim(["default"], "w", 2, 30.0)
        results = []
        for task in (first, second):
            envelope, message = parse_request(CODEC, task.request)
            results.append(completed(CODEC, envelope, message, 1))
        statements: list[str] = []
        backend._conn.set_trace_callback(statements.append)
        assert backend.tasks.finish(first.id, "w", results[0], durable=False) == "accepted"
        assert statements.count("PRAGMA synchronous=NORMAL") == 1
        assert backend._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
        statements.clear()
        assert backend.tasks.finish(second.id, "w", results[1]) == "accepted"
        assert "PRAGMA synchronous=NORMAL" not in statements
        # and both results are on the log, as any reader sees it
        on_log = {orjson.loads(r.value)["id"] for r in backend.log.read(0, 0, 1000)}
        assert on_log >= {protocol.task_result_id(t.id) for t in (first, second)}
    finally:
        backend._conn.set_trace_callback(None)
        backend.close()


def test_a_group_with_one_durable_finish_is_fsynced(tmp_path: Path) -> None:
    """A worker's finishes and the HTTP API's can share a group (``overture serve`` runs
    both on one backend): the group waits for the disk if any of them is durable."""
    backend = _open(tmp_path / "mixed.db")
    try:
        publish(backend, *(attempt_record(seq=seq) for seq in (1, 2, 3)))
        tasks = backend.tasks.claim(["default"], "w", 3, 30.0)
        results = {}
        for task in tasks:
            envelope, message = parse_request(CODEC, task.request)
            results[task.id] = completed(CODEC, envelope, message, 1)
        lead, worker_s, api_s = (t.id for t in tasks)
        answers: dict[str, object] = {}

        def finish(task_id: str, durable: bool) -> None:
            answers[task_id] = backend.tasks.finish(task_id, "w", results[task_id], durable=durable)

        statements: list[str] = []
        backend._conn.set_trace_callback(statements.append)
        queue = backend.tasks
        threads = [
            threading.Thread(target=finish, args=(lead, False)),
            threading.Thread(target=finish, args=(worker_s, False)),
            threading.Thread(target=finish, args=(api_s, True)),
        ]
        with backend._lock:  # the lead waits here; the other two join the next group
            threads[0].start()
            while not queue._leading:
                time.sleep(0.001)
            for thread in threads[1:]:
                thread.start()
            while len(queue._queue) < 2:
                time.sleep(0.001)
        for thread in threads:
            thread.join(30)
        backend._conn.set_trace_callback(None)
        assert answers == dict.fromkeys((lead, worker_s, api_s), "accepted")
        begins = [i for i, sql in enumerate(statements) if sql == "BEGIN IMMEDIATE"]
        assert len(begins) == 2  # the lead's finish alone, then the group of two
        assert statements[begins[0] - 1] == "PRAGMA synchronous=NORMAL"  # not durable
        assert "PRAGMA synchronous=NORMAL" not in statements[begins[0] + 1 :]  # fsynced
    finally:
        backend._conn.set_trace_callback(None)
        backend.close()


def test_a_batch_with_a_misfiled_attempt_is_refused_whole(tmp_path: Path) -> None:
    backend = _open(tmp_path / "bad.db")
    try:
        good, other = attempt_record(instance="good"), attempt_record(instance="other")
        batch = Batch("engine")
        batch.tasks[good.id] = good
        batch.tasks["task:wrong:1:1"] = other  # filed under another id
        batch.offsets[0] = 7
        with pytest.raises(ov.ConfigError, match="nothing was written"):
            backend.commit(batch)
        assert backend._query("SELECT count(*) FROM tasks") == [(0,)]
        assert backend.offsets("engine") == {}
    finally:
        backend.close()
