"""The task queue port (``Backend.tasks``): attempts published by the engine's commits
(``Batch.tasks``), claimed with leases, re-delivered when a lease runs out, finished
into the log exactly once.

Runs on the backends with a lease-based queue (SQLite; memory once its queue exists:
until then that case is skipped). Everything goes through the real port: attempts are
committed through the engine's store, results are read back from the log.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from overture import protocol
from overture.codec import Codec
from overture.errors import ConfigError, MalformedEvent
from overture.ports import NewRecord, TaskQueue
from overture.tasks import completed, failed, parse_request

from ..tasks.attempts import attempt_record, end, publish
from .conftest import Subject

pytestmark = pytest.mark.parametrize("subject", ["memory", "sqlite"], indirect=True)

CODEC = Codec()


@pytest.fixture
def queue(subject: Subject) -> TaskQueue:
    if not hasattr(subject.backend, "tasks"):
        pytest.skip(f"the {subject.kind} backend has no task queue on this branch yet")
    return subject.backend.tasks


def _result(raw: bytes, output: object = "ok") -> NewRecord:
    envelope, message = parse_request(CODEC, raw)
    return completed(CODEC, envelope, message, output)


def _results_on_log(subject: Subject, attempt_id: str) -> list[dict[str, object]]:
    """Every result event of the attempt on the log (all partitions)."""
    log = subject.backend.log
    found = []
    for part in range(log.partitions):
        for record in log.read(part, 0, 10_000):
            event = orjson.loads(record.value)
            if event["id"] == protocol.task_result_id(attempt_id):
                found.append(event)
    return found


def test_claim_takes_published_attempts_oldest_first_and_leases_them(
    subject: Subject, queue: TaskQueue
) -> None:
    first = attempt_record(instance="a", input={"n": 1})
    second = attempt_record(instance="b", queue="other")
    third = attempt_record(instance="c")
    publish(subject.engine(), first)
    publish(subject.engine(), second, third)
    assert queue.claim(["nothing-here"], "w1", 10, 30.0) == []

    before = time.time()
    got = queue.claim(["default", "other"], "w1", 2, 30.0)
    assert [t.id for t in got] == [first.id, second.id]  # oldest first, across queues
    assert got[0].request == first.request and got[0].queue == "default"
    assert got[1].queue == "other"
    assert before + 30.0 <= got[0].lease_until <= time.time() + 30.0
    _, message = parse_request(CODEC, got[0].request)
    assert message.input == {"n": 1}

    assert [t.id for t in queue.claim(["default", "other"], "w2", 10, 30.0)] == [third.id]
    assert queue.claim(["default", "other"], "w3", 10, 30.0) == []  # all leased


def test_an_expired_lease_is_redelivered_and_its_old_holder_loses_it(
    subject: Subject, queue: TaskQueue
) -> None:
    record = attempt_record()
    publish(subject.engine(), record)
    assert [t.id for t in queue.claim(["default"], "w1", 1, 0.3)] == [record.id]
    assert queue.claim(["default"], "w2", 1, 30.0) == []
    time.sleep(0.4)
    # the lease ran out, nobody took the attempt since: its holder may still extend it
    assert queue.heartbeat(record.id, "w1", 0.3)
    assert queue.claim(["default"], "w2", 1, 30.0) == []
    time.sleep(0.4)
    assert [t.id for t in queue.claim(["default"], "w2", 1, 30.0)] == [record.id]
    assert not queue.heartbeat(record.id, "w1", 30.0)  # w2's now
    assert queue.heartbeat(record.id, "w2", 30.0)


def test_heartbeat_keeps_the_lease(subject: Subject, queue: TaskQueue) -> None:
    record = attempt_record()
    publish(subject.engine(), record)
    queue.claim(["default"], "w1", 1, 0.3)
    for _ in range(4):
        time.sleep(0.15)
        assert queue.heartbeat(record.id, "w1", 0.3)
    assert queue.claim(["default"], "w2", 1, 30.0) == []  # 0.6 s later: still w1's
    assert not queue.heartbeat("task:nobody:1:1", "w1", 30.0)


def test_finish_appends_the_result_once(subject: Subject, queue: TaskQueue) -> None:
    record = attempt_record(partitionkey="order-7")
    publish(subject.engine(), record)
    (task,) = queue.claim(["default"], "w1", 1, 30.0)
    result = _result(task.request, {"shipped": True})

    assert queue.finish(task.id, "w1", result) == "accepted"
    (event,) = _results_on_log(subject, record.id)
    assert event["type"] == protocol.TASK_COMPLETED
    assert event["partitionkey"] == "order-7"
    assert event["data"]["output"] == {"shipped": True}
    found = subject.backend.log.find_event(protocol.task_result_id(record.id))
    assert found is not None and found.key == "order-7"

    # a second result of the attempt (the same worker again, or another one) is refused
    envelope, message = parse_request(CODEC, task.request)
    other = failed(CODEC, envelope, message, "Boom", "late", retryable=True)
    assert queue.finish(task.id, "w1", result) == "ended"
    assert queue.finish(task.id, "w2", other) == "ended"
    assert len(_results_on_log(subject, record.id)) == 1
    # and the attempt is not handed out again
    assert queue.claim(["default"], "w3", 10, 0.1) == []
    assert not queue.heartbeat(task.id, "w1", 30.0)


def test_finish_after_the_lease_ran_out_is_accepted_while_the_attempt_is_open(
    subject: Subject, queue: TaskQueue
) -> None:
    record = attempt_record()
    publish(subject.engine(), record)
    (task,) = queue.claim(["default"], "w1", 1, 0.1)
    time.sleep(0.2)
    (again,) = queue.claim(["default"], "w2", 1, 30.0)  # re-delivered
    assert queue.finish(task.id, "w1", _result(task.request, "first")) == "accepted"
    assert queue.finish(again.id, "w2", _result(again.request, "second")) == "ended"
    (event,) = _results_on_log(subject, record.id)
    assert event["data"]["output"] == "first"


def test_finish_of_an_unknown_or_ended_attempt_writes_nothing(
    subject: Subject, queue: TaskQueue
) -> None:
    record = attempt_record()
    publish(subject.engine(), record)
    ghost = attempt_record(instance="ghost")  # never published
    assert queue.finish(ghost.id, "w1", _result(ghost.request)) == "unknown"

    (task,) = queue.claim(["default"], "w1", 1, 30.0)
    end(subject.engine(), record.id)  # the engine gave the attempt up
    assert queue.finish(task.id, "w1", _result(task.request)) == "ended"
    assert not queue.heartbeat(task.id, "w1", 30.0)
    assert _results_on_log(subject, record.id) == []
    assert _results_on_log(subject, ghost.id) == []


def test_an_ended_attempt_is_never_claimed_and_republishing_changes_nothing(
    subject: Subject, queue: TaskQueue
) -> None:
    open_one, ended_one = attempt_record(instance="open"), attempt_record(instance="ended")
    publish(subject.engine(), open_one, ended_one)
    end(subject.engine(), ended_one.id)
    (task,) = queue.claim(["default"], "w1", 10, 30.0)
    assert task.id == open_one.id
    publish(subject.engine(), open_one, ended_one)  # e.g. an engine redoing its batch
    assert queue.claim(["default"], "w2", 10, 30.0) == []  # still leased, still ended
    assert queue.finish(ended_one.id, "w1", _result(ended_one.request)) == "ended"


def test_subscribe_wakes_when_a_commit_publishes(subject: Subject, queue: TaskQueue) -> None:
    woken = threading.Event()
    unsubscribe = queue.subscribe(woken.set)
    try:
        time.sleep(0.1)
        woken.clear()
        publish(subject.engine(), attempt_record())
        assert woken.wait(5.0)
    finally:
        unsubscribe()


def test_bad_arguments_are_refused_and_change_nothing(subject: Subject, queue: TaskQueue) -> None:
    record = attempt_record()
    publish(subject.engine(), record)
    for queues, worker, limit, lease in [
        ([], "w", 1, 1.0),
        ([""], "w", 1, 1.0),
        ("default", "w", 1, 1.0),
        (["default"], "", 1, 1.0),
        (["default"], "w", -1, 1.0),
        (["default"], "w", 1, 0.0),
        (["default"], "w", 1, -5.0),
        (["default"], "w", 1, float("nan")),
        (["default"], "w", 1, float("inf")),
    ]:
        with pytest.raises(ConfigError):
            queue.claim(queues, worker, limit, lease)  # type: ignore[arg-type]
    assert queue.claim(["default"], "w", 0, 1.0) == []
    with pytest.raises(ConfigError):
        queue.heartbeat(record.id, "w", 0.0)

    other = attempt_record(instance="other")
    with pytest.raises(MalformedEvent, match="event id"):
        queue.finish(record.id, "w", _result(other.request))  # another attempt's result
    wrong_type = NewRecord("k1", b"{}", protocol.task_result_id(record.id), "order.placed")
    with pytest.raises(MalformedEvent, match="completed"):
        queue.finish(record.id, "w", wrong_type)
    assert _results_on_log(subject, record.id) == []
    (task,) = queue.claim(["default"], "w", 1, 30.0)  # still open, never leased
    assert task.id == record.id
