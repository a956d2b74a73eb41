"""The Python worker on a real SQLite file: attempts committed through the engine's store,
results read back from the log."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import overture as ov
from overture import protocol
from overture.backends import open_backend
from overture.backends.sqlite import SqliteBackend
from overture.ports import TaskRecord
from overture.worker import UNKNOWN_TASK, Worker

from . import workerapp
from .attempts import attempt_record, end, publish

app = workerapp.app


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    opened = open_backend(f"sqlite:///{tmp_path / 'w.db'}")
    assert isinstance(opened, SqliteBackend)  # the engine store too (embedded)
    workerapp.GATE.clear()
    workerapp.RUNNING.update(now=0, most=0)
    yield opened
    workerapp.GATE.set()
    opened.close()


def _result(backend: SqliteBackend, attempt_id: str) -> dict[str, Any] | None:
    found = backend.log.find_event(protocol.task_result_id(attempt_id))
    return None if found is None else orjson.loads(found.value)


async def _finished(worker: Worker, count: int) -> None:
    async with asyncio.timeout(10):
        await worker.wait_finished(count)


async def _wait_result(backend: SqliteBackend, attempt_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10.0
    while (event := _result(backend, attempt_id)) is None:
        assert time.monotonic() < deadline, f"no result for {attempt_id}"
        await asyncio.sleep(0.02)
    return event


async def test_sync_and_async_tasks_complete(backend: SqliteBackend) -> None:
    sync = attempt_record("t.echo", instance="s", input={"n": 1}, partitionkey="key-s")
    coro = attempt_record("t.async_echo", instance="a", input=[1, 2])
    async with Worker(app, backend, concurrency=2) as worker:
        publish(backend, sync, coro)
        await _finished(worker, 2)
    done = _result(backend, sync.id)
    assert done is not None and done["type"] == protocol.TASK_COMPLETED
    assert done["data"] == {
        "instance_id": "s",
        "seq": 1,
        "attempt": 1,
        "output": {"echo": {"n": 1}},
    }
    assert done["partitionkey"] == "key-s" and done["subject"] == "t.echo"
    other = _result(backend, coro.id)
    assert other is not None and other["data"]["output"] == {"async": [1, 2]}
    assert worker.stats.claimed == 2 and worker.stats.accepted == 2


async def test_a_workers_result_is_committed_without_waiting_for_the_disk(
    backend: SqliteBackend,
) -> None:
    """A worker tells no one it finished, so its finish is not durable
    (``ports.TaskQueue.finish``): its transaction commits at ``synchronous=NORMAL``, and
    the connection is left at ``FULL`` for the engine's commits."""
    statements: list[str] = []
    backend._conn.set_trace_callback(statements.append)
    try:
        async with Worker(app, backend) as worker:
            publish(backend, attempt_record("t.echo", instance="d", input=1))
            await _finished(worker, 1)
    finally:
        backend._conn.set_trace_callback(None)
    append = next(
        i for i, sql in enumerate(statements) if sql.startswith("INSERT OR IGNORE INTO log")
    )
    begin = max(i for i in range(append) if statements[i] == "BEGIN IMMEDIATE")
    assert "PRAGMA synchronous=NORMAL" in statements[begin - 1 : begin]
    assert backend._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    assert _result(backend, attempt_record("t.echo", instance="d").id) is not None


async def test_attempts_that_end_together_are_finished_in_one_transaction(
    backend: SqliteBackend,
) -> None:
    """Async attempts claimed together (one claim takes all 8) end in the same loop
    turn: their results are one ``finish_many`` call, so one transaction writes them
    all (not one per result on a thread of its own each: docs/benchmarks.md, W5)."""
    records = [attempt_record("t.async_echo", instance=f"c{n}", input=n) for n in range(8)]
    statements: list[str] = []
    async with Worker(app, backend, concurrency=8, claim_batch=8) as worker:
        backend._conn.set_trace_callback(statements.append)
        try:
            publish(backend, *records)
            await _finished(worker, 8)
        finally:
            backend._conn.set_trace_callback(None)
    assert worker.stats.claimed == 8 and worker.stats.accepted == 8
    writes = [i for i, sql in enumerate(statements) if sql.startswith("INSERT OR IGNORE INTO log")]
    begins = {max(i for i in range(w) if statements[i] == "BEGIN IMMEDIATE") for w in writes}
    assert len(begins) == 1, f"the 8 results took {len(begins)} transactions"
    assert [_result(backend, r.id) is not None for r in records] == [True] * 8


async def test_a_task_function_knows_its_idempotency_key_and_attempt(
    backend: SqliteBackend,
) -> None:
    """``ov.current_step()`` inside a task function, as inside a step: the call's
    idempotency key (the same for every attempt), the attempt, the instance, the task;
    and nothing outside it."""
    records = [
        attempt_record("t.whoami", instance="i", seq=3, attempt=2),
        attempt_record("t.async_whoami", instance="j", seq=5, attempt=1),
        attempt_record("t.async_whoami", instance="k", seq=1, attempt=4),
    ]
    async with Worker(app, backend, concurrency=3) as worker:
        publish(backend, *records)
        await _finished(worker, 3)
        assert ov.current_step() is None  # it never leaks into the worker's own context
    outputs = [_result(backend, r.id) for r in records]
    assert [o["data"]["output"] if o else None for o in outputs] == [
        ["i:3", 2, "i", "t.whoami"],
        ["j:5", 1, "j", "t.async_whoami"],
        ["k:1", 4, "k", "t.async_whoami"],
    ]


@pytest.mark.parametrize(
    ("task", "error_type", "retryable", "message"),
    [
        ("t.fail", "ValueError", True, "cannot go"),
        ("t.terminal", "TerminalError", False, "never again"),
        ("t.not_json", "TypeError", False, "not JSON"),
        ("t.nobody", UNKNOWN_TASK, False, "no function for task 't.nobody'"),
        ("t.push", "ConnectError", True, "127.0.0.1:9"),  # pushed: the endpoint refuses
    ],
)
async def test_failures_say_whether_to_retry(
    backend: SqliteBackend, task: str, error_type: str, retryable: bool, message: str
) -> None:
    record = attempt_record(task, input="go")
    async with Worker(app, backend, worker_id="w-7") as worker:
        publish(backend, record)
        await _finished(worker, 1)
    event = _result(backend, record.id)
    assert event is not None and event["type"] == protocol.TASK_FAILED
    assert event["data"]["error"]["type"] == error_type
    assert message in event["data"]["error"]["message"]
    assert event["data"]["retryable"] is retryable
    if error_type == UNKNOWN_TASK:
        assert "w-7" in event["data"]["error"]["message"]  # names the worker


@pytest.mark.parametrize("task", ["t.counted", "t.async_counted"])
async def test_concurrency_bounds_the_attempts_running_at_once(
    backend: SqliteBackend, task: str
) -> None:
    records = [attempt_record(task, instance=f"c{i}", input=0.15) for i in range(9)]
    async with Worker(app, backend, concurrency=3) as worker:
        publish(backend, *records)
        await _finished(worker, 9)
    assert workerapp.RUNNING["most"] == 3
    assert all(_result(backend, r.id) is not None for r in records)


async def test_a_slow_attempt_does_not_block_the_other_slots(backend: SqliteBackend) -> None:
    slow = attempt_record("t.gated", instance="slow")
    quick = [attempt_record("t.echo", instance=f"q{i}", input=i) for i in range(5)]
    async with Worker(app, backend, concurrency=2) as worker:
        publish(backend, slow)
        publish(backend, *quick)
        for record in quick:
            await _wait_result(backend, record.id)
        assert _result(backend, slow.id) is None  # still running, in its own slot
        workerapp.GATE.set()
        assert (await _wait_result(backend, slow.id))["data"]["output"] == "released"
    assert worker.stats.accepted == 6


async def test_heartbeats_keep_a_long_attempt_leased(backend: SqliteBackend) -> None:
    # two leases' worth of running, renewed every third of one (a lease long enough that
    # a loaded machine's scheduling delays do not make a renewal late)
    record = attempt_record("t.sleep", input=4.0)
    async with Worker(app, backend, lease=2.0, poll=0.05) as first:
        publish(backend, record)
        await asyncio.sleep(0.2)
        async with Worker(app, backend, lease=2.0, poll=0.05) as second:
            await _finished(first, 1)
    assert first.stats.accepted == 1 and first.stats.lost_leases == 0
    assert second.stats.claimed == 0  # never re-delivered while renewed


async def test_a_lost_lease_is_logged_and_the_result_still_sent(
    backend: SqliteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    record = attempt_record("t.sleep", input=0.6)
    async with Worker(app, backend, lease=0.3) as worker:
        publish(backend, record)
        await asyncio.sleep(0.05)
        end(backend, record.id)  # the engine gave the attempt up meanwhile
        await _finished(worker, 1)
    assert worker.stats.lost_leases == 1
    assert worker.stats.ended == 1  # sent, and refused: the attempt was over
    assert _result(backend, record.id) is None
    assert "lost the lease" in caplog.text


async def test_a_heartbeat_that_raises_is_logged_and_the_renewals_go_on(
    backend: SqliteBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The port raising something other than an OvertureError (here SQLite's own
    IntegrityError, from a trigger refusing every renewal) must not end the heartbeats:
    each failure is logged, three in a row as an error, and once renewals get through
    again the lease is held again."""
    record = attempt_record("t.sleep", input=3.0)
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute(
        "CREATE TRIGGER refuse_renewal BEFORE UPDATE OF lease_until ON tasks "
        "WHEN OLD.worker IS NOT NULL AND NEW.worker IS OLD.worker "
        "BEGIN SELECT RAISE(ABORT, 'no renewal'); END"
    )
    conn.commit()
    try:
        # poll=30: no claim of its own takes the lapsed attempt back meanwhile
        async with Worker(app, backend, lease=0.3, poll=30.0) as worker:
            publish(backend, record)
            async with asyncio.timeout(10):
                await worker.until(lambda s: s.failed_heartbeats >= 4)
            conn.execute("DROP TRIGGER refuse_renewal")
            conn.commit()
            deadline = time.monotonic() + 10.0
            while True:  # a renewal gets through: the lease runs into the future again
                (until,) = conn.execute(
                    "SELECT lease_until FROM tasks WHERE id = ?", (record.id,)
                ).fetchone()
                if until > time.time():
                    break
                assert time.monotonic() < deadline, "the heartbeats stopped"
                await asyncio.sleep(0.05)
            await _finished(worker, 1)
    finally:
        conn.close()
    assert worker.stats.accepted == 1 and worker.stats.lost_leases == 0
    assert "IntegrityError" in caplog.text  # a bug below the port: its traceback
    assert "3 time(s) in a row; its lease has run out" in caplog.text


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_request_that_does_not_parse_is_answered_once_and_not_handed_out_again(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Left to its lease, an unparsable request came back at every expiry, forever: it
    is answered with a non-retryable failure, so the attempt ends."""
    url = f"sqlite:///{tmp_path / 'bad.db'}" if kind == "sqlite" else f"memory://{tmp_path.name}"
    opened = open_backend(url, partitions=4)
    good = attempt_record("t.echo", instance="fine")
    envelope = orjson.loads(attempt_record("t.echo", instance="half", partition=3).request)
    del envelope["data"]["task"]  # readable JSON with a reply, but not a TaskRequest
    half = TaskRecord(envelope["id"], "default", orjson.dumps(envelope))
    garbage = TaskRecord(protocol.task_attempt_id("lost", 2, 1), "default", b"\xff not json")
    try:
        async with Worker(app, opened, lease=0.2, poll=0.05) as worker:
            publish(opened, half, garbage, good)
            async with asyncio.timeout(10):
                await worker.until(lambda s: s.invalid == 2 and s.accepted == 3)
            await asyncio.sleep(0.5)  # past two leases: nothing is handed out again
        assert worker.stats.claimed == 3 and worker.stats.failed_finishes == 0
        assert opened.tasks.claim(["default"], "another", 5, 30.0) == []
        answer = opened.log.find_event(protocol.task_result_id(half.id))
        assert answer is not None and answer.partition == 3  # its reply's partition
        event = orjson.loads(answer.value)
        assert event["type"] == protocol.TASK_FAILED
        assert event["partitionkey"] == "k1"
        assert event["data"]["instance_id"] == "half" and event["data"]["retryable"] is False
        assert event["data"]["error"]["type"] == "InvalidTaskRequest"
        assert "task" in event["data"]["error"]["message"]
        lost = opened.log.find_event(protocol.task_result_id(garbage.id))
        assert lost is not None
        data = orjson.loads(lost.value)["data"]
        assert (data["instance_id"], data["seq"], data["attempt"]) == ("lost", 2, 1)
        assert "not a valid request, answered" in caplog.text
    finally:
        opened.close()


async def test_an_attempt_past_its_deadline_is_skipped(backend: SqliteBackend) -> None:
    """The SQLite queue does not hand out such attempts any more; a queue that does (or
    a deadline passing between claim and start) meets the worker's own check."""
    record = attempt_record("t.counted", queue="aside", input=0.0, deadline=time.time() + 0.2)
    publish(backend, record)
    (claimed,) = backend.tasks.claim(["aside"], "test", 1, 30.0)
    async with Worker(app, backend) as worker:  # serves other queues than "aside"
        await asyncio.sleep(0.3)
        await worker._attempt(claimed)
    assert worker.stats.skipped == 1
    assert workerapp.RUNNING["most"] == 0  # never ran
    assert _result(backend, record.id) is None


async def test_stop_lets_running_attempts_finish_within_the_grace(backend: SqliteBackend) -> None:
    record = attempt_record("t.sleep", input=0.3)
    worker = Worker(app, backend, grace=5.0)
    runner = asyncio.create_task(worker.run())
    publish(backend, record)
    async with asyncio.timeout(10):
        await worker.until(lambda stats: stats.claimed == 1)
    worker.stop()
    await asyncio.wait_for(runner, 5.0)
    assert worker.stats.accepted == 1 and worker.stats.abandoned == 0
    assert _result(backend, record.id) is not None
    late = attempt_record("t.echo", instance="late")
    publish(backend, late)
    await asyncio.sleep(0.2)
    assert backend.tasks.claim(["default"], "after", 5, 30.0)[0].id == late.id  # not claimed


async def test_an_attempt_over_the_grace_is_left_to_its_lease(backend: SqliteBackend) -> None:
    record = attempt_record("t.sleep", input=60.0)
    worker = Worker(app, backend, grace=0.2, lease=0.5)
    runner = asyncio.create_task(worker.run())
    publish(backend, record)
    async with asyncio.timeout(10):
        await worker.until(lambda stats: stats.claimed == 1)
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(runner, 5.0)
    assert time.monotonic() - started < 2.0
    assert worker.stats.abandoned == 1 and _result(backend, record.id) is None
    assert backend.tasks.claim(["default"], "next", 1, 30.0) == []  # still leased
    await asyncio.sleep(0.6)
    assert [t.id for t in backend.tasks.claim(["default"], "next", 1, 30.0)] == [record.id]


async def test_a_claim_takes_at_most_claim_batch_and_a_full_one_claims_again_at_once() -> None:
    """Nine attempts published together, four per claim: claims of 4, 4 and 1, one after
    the other without waiting for the poll (only a claim that got fewer than it asked
    for means the queue is empty), the last slot filled too although it is less than a
    quarter of them (the wait for a quarter is for refills, not for a fill from a
    backlog). Each claim stamps its attempts with one lease end, which tells the claims
    apart. (``memory://``: one wake per publish, so nothing but the worker's own loop
    can start the next claim.)"""
    memory = open_backend(f"memory://{uuid.uuid4().hex}")
    records = [attempt_record("t.gated", instance=f"b{i}") for i in range(9)]
    workerapp.GATE.clear()
    try:
        async with Worker(app, memory, concurrency=9, claim_batch=4, poll=30.0) as worker:
            await asyncio.sleep(0.1)  # it claimed nothing and waits on the queue's bell
            publish(memory, *records)
            async with asyncio.timeout(5):  # not the 30 s poll, nor a slot's end
                await worker.until(lambda s: s.claimed == 9)
            attempts = memory.tasks._attempts.values()  # type: ignore[attr-defined]
            claims = Counter(a.lease_until for a in attempts)
            workerapp.GATE.set()
            await _finished(worker, 9)
    finally:
        workerapp.GATE.set()
        memory.close()
    assert sorted(claims.values()) == [1, 4, 4]
    assert worker.stats.accepted == 9


async def test_new_attempts_wake_a_waiting_worker_at_once(backend: SqliteBackend) -> None:
    async with Worker(app, backend, poll=30.0) as worker:
        await asyncio.sleep(0.3)  # claimed nothing, now waiting on the queue's bell
        started = time.monotonic()
        publish(backend, attempt_record("t.echo"))
        await _finished(worker, 1)
        assert time.monotonic() - started < 2.0  # not the 30 s poll


def test_bad_options_are_refused(backend: SqliteBackend) -> None:
    empty = ov.App("empty")
    with pytest.raises(ov.ConfigError, match="no task with a function"):
        Worker(empty, backend)
    Worker(empty, backend, queues=["other"])  # a queue named explicitly is fine
    for options in (
        {"concurrency": 0},
        {"concurrency": 1.5},
        {"claim_batch": 0},
        {"claim_batch": 9},  # more than the 8 slots
        {"claim_batch": 2.0},
        {"claim_batch": True},
        {"lease": 0},
        {"lease": float("nan")},
        {"poll": -1},
        {"grace": -1},
        {"queues": "default"},
        {"queues": [""]},
        {"worker_id": ""},
    ):
        with pytest.raises(ov.ConfigError):
            Worker(app, backend, **options)  # type: ignore[arg-type]


def test_default_queues_are_those_of_tasks_with_a_function(backend: SqliteBackend) -> None:
    assert Worker(app, backend).queues == ["default", "effects"]  # not t.push's alone


async def test_a_worker_runs_once(backend: SqliteBackend) -> None:
    worker = Worker(app, backend)
    worker.stop()
    await worker.run()  # stopped before it started: returns at once
    with pytest.raises(ov.ConfigError, match="runs once"):
        await worker.run()


async def test_a_result_the_queue_cannot_take_is_left_to_its_lease(
    backend: SqliteBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = attempt_record("t.echo", instance="refused")
    fine = attempt_record("t.echo", instance="fine")
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON log "
        f"WHEN NEW.event_id = '{protocol.task_result_id(refused.id)}' "
        "BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    conn.commit()
    conn.close()
    async with Worker(app, backend, lease=0.5) as worker:
        publish(backend, refused)
        await _finished(worker, 1)
        publish(backend, fine)  # the worker goes on
        await _finished(worker, 2)
    assert worker.stats.failed_finishes == 1 and worker.stats.accepted == 1
    assert "finishing task attempt" in caplog.text
    assert _result(backend, refused.id) is None
    await asyncio.sleep(0.6)  # its lease runs out: another worker gets it
    assert [t.id for t in backend.tasks.claim(["default"], "next", 5, 30.0)] == [refused.id]


async def test_a_worker_never_runs_an_attempt_it_is_running_again(
    backend: SqliteBackend,
) -> None:
    """A loop blocked past the lease lets the lease lapse; the worker's next claim may
    take the attempt back (renewing its lease), but must not start it a second time."""
    workerapp.STARTS.clear()
    record = attempt_record("t.blocking", input="once")
    async with Worker(app, backend, lease=0.2, poll=0.05) as worker:
        publish(backend, record)
        await _finished(worker, 1)
    assert workerapp.STARTS == ["once"]
    assert worker.stats.accepted == 1
