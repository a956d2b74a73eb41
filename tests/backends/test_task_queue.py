"""The task queue port (``Backend.tasks``, ``ports.TaskQueue``) as workers use it: what an
engine's commit publishes (``Batch.tasks``) is claimed oldest first with a lease, renewed
by heartbeats, handed to the next claimer once the lease runs out, and finished by
appending the result to the log; an attempt the engine ended is claimed by nobody and its
result refused.

Parametrized like the rest of the conformance suite; only the backends whose queue
exists run it so far (``QUEUE_KINDS``): add ``"sqlite"`` and ``"kafka"`` there as their
queues land. Leases are real time (workers run in real time), so the lease tests use
leases of a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from overture import protocol
from overture.errors import ConfigError, MalformedEvent
from overture.ports import Batch, NewRecord, TaskRecord

from .conftest import Subject

QUEUE_KINDS = ["memory", "sqlite"]
"""The backends whose ``TaskQueue`` this suite holds to (see the module docstring)."""


@pytest.fixture(params=QUEUE_KINDS)
def queue_subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    kind = request.param
    if kind == "memory":
        url = f"memory://tasks-{tmp_path.name}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 't.db'}"
    else:
        from ..conftest import kafka_url

        url = kafka_url(request.getfixturevalue("kafka_bootstrap"), partitions=4)
    s = Subject(kind, url)
    yield s
    s.close()


def attempt(n: int, queue: str = "default", instance: str = "i") -> TaskRecord:
    """Attempt 1 of call ``n`` of ``instance``: a request as an engine publishes it."""
    attempt_id = protocol.task_attempt_id(instance, n, 1)
    request = {
        "specversion": "1.0",
        "id": attempt_id,
        "source": "/conformance",
        "type": protocol.TASK_REQUESTED,
        "subject": "t",
        "data": {
            "task": "t",
            "queue": queue,
            "input": n,
            "instance_id": instance,
            "seq": n,
            "attempt": 1,
            "idempotency_key": f"{instance}:{n}",
            "deadline": None,
            "reply": {"partitionkey": "k", "partition": 1},
        },
    }
    return TaskRecord(attempt_id, queue, orjson.dumps(request), None)


def result(record: TaskRecord, output: object = "done") -> NewRecord:
    """The completion a worker appends for ``record`` (as ``tasks.completed`` builds it)."""
    request = orjson.loads(record.request)
    data = request["data"]
    event = {
        "specversion": "1.0",
        "id": protocol.task_result_id(record.id),
        "source": request["source"],
        "type": protocol.TASK_COMPLETED,
        "partitionkey": "k",
        "data": {
            "instance_id": data["instance_id"],
            "seq": data["seq"],
            "attempt": data["attempt"],
            "output": output,
        },
    }
    return NewRecord("k", orjson.dumps(event), event["id"], protocol.TASK_COMPLETED, partition=1)


def publish(subject: Subject, *records: TaskRecord) -> None:
    subject.engine().store.commit(Batch("g", tasks={r.id: r for r in records}))


def end(subject: Subject, *records: TaskRecord) -> None:
    subject.engine().store.commit(Batch("g", tasks={r.id: None for r in records}))


def test_a_published_attempt_is_claimed_once_oldest_first(queue_subject: Subject) -> None:
    queue = queue_subject.backend.tasks
    first, second, third = attempt(1), attempt(2), attempt(3)
    publish(queue_subject, first, second)
    publish(queue_subject, third)
    before = time.time()
    claimed = queue.claim(["default"], "w1", 2, 30.0)
    assert [c.id for c in claimed] == [first.id, second.id]
    assert claimed[0].request == first.request  # the bytes as published
    assert claimed[0].queue == "default"
    assert before + 30 <= claimed[0].lease_until <= time.time() + 30
    assert [c.id for c in queue.claim(["default"], "w2", 5, 30.0)] == [third.id]
    assert queue.claim(["default"], "w3", 5, 30.0) == []  # all held


def test_claim_takes_only_the_queues_asked_for(queue_subject: Subject) -> None:
    queue = queue_subject.backend.tasks
    publish(queue_subject, attempt(1, "mail"), attempt(2, "sms"))
    assert queue.claim(["push"], "w", 5, 30.0) == []
    assert [c.queue for c in queue.claim(["sms", "push"], "w", 5, 30.0)] == ["sms"]


def test_a_lease_that_runs_out_hands_the_attempt_to_the_next_claimer(
    queue_subject: Subject,
) -> None:
    queue = queue_subject.backend.tasks
    record = attempt(1)
    publish(queue_subject, record)
    assert len(queue.claim(["default"], "w1", 1, 0.2)) == 1
    assert queue.claim(["default"], "w2", 1, 0.2) == []
    assert queue.heartbeat(record.id, "w1", 0.2)  # renewed: still w1's
    assert queue.claim(["default"], "w2", 1, 0.2) == []
    time.sleep(0.3)
    assert [c.id for c in queue.claim(["default"], "w2", 1, 30.0)] == [record.id]
    assert not queue.heartbeat(record.id, "w1", 30.0)  # w1 lost it
    assert queue.heartbeat(record.id, "w2", 30.0)
    assert not queue.heartbeat(record.id, "nobody", 30.0)
    assert not queue.heartbeat("task:none:1:1", "w2", 30.0)


def test_finish_appends_the_result_and_ends_the_claim(queue_subject: Subject) -> None:
    backend = queue_subject.backend
    record = attempt(1)
    publish(queue_subject, record)
    (claimed,) = backend.tasks.claim(["default"], "w1", 1, 30.0)
    assert backend.tasks.finish(claimed.id, "w1", result(record)) == "accepted"
    stored = backend.log.find_event(protocol.task_result_id(record.id))
    assert stored is not None and stored.partition == 1
    assert orjson.loads(stored.value)["data"]["output"] == "done"
    assert backend.tasks.claim(["default"], "w2", 1, 0.01) == []  # finished: never again
    assert not backend.tasks.heartbeat(record.id, "w1", 30.0)
    # a second result of the same attempt is refused and writes nothing
    assert backend.tasks.finish(claimed.id, "w2", result(record, "other")) == "ended"
    ends = [backend.log.end_offset(p) for p in range(backend.log.partitions)]
    assert sum(ends) == 1


def test_a_result_must_go_to_the_partition_its_request_names(queue_subject: Subject) -> None:
    """The request says reply.partition 1: a result for partition 2, or for none (its
    key would pick one), is refused and writes nothing; the attempt stays open, so the
    right result is still taken."""
    from dataclasses import replace

    backend = queue_subject.backend
    record = attempt(1)
    publish(queue_subject, record)
    (claimed,) = backend.tasks.claim(["default"], "w1", 1, 30.0)
    for partition, said in ((2, "not 2"), (None, "not no partition")):
        wrong = replace(result(record), partition=partition)
        with pytest.raises(MalformedEvent, match=f"must go to partition 1 .*{said}"):
            backend.tasks.finish(claimed.id, "w1", wrong)
    assert [backend.log.end_offset(p) for p in range(backend.log.partitions)] == [0] * 4
    assert backend.tasks.finish(claimed.id, "w1", result(record)) == "accepted"
    stored = backend.log.find_event(protocol.task_result_id(record.id))
    assert stored is not None and stored.partition == 1


def test_finish_many_finishes_each_as_if_alone(queue_subject: Subject) -> None:
    """A worker's results handed over together: each gets the outcome (or the error) its
    own ``finish`` would have, one bad result fails alone, and exactly the good ones are
    appended."""
    from dataclasses import replace

    backend = queue_subject.backend
    good, wrong, ended, never = attempt(1), attempt(2), attempt(3), attempt(9)
    publish(queue_subject, good, wrong, ended)
    backend.tasks.claim(["default"], "w1", 3, 30.0)
    end(queue_subject, ended)
    outcomes = backend.tasks.finish_many(
        "w1",
        [
            (wrong.id, replace(result(wrong), partition=2)),
            (good.id, result(good)),
            (ended.id, result(ended)),
            (never.id, result(never)),
            (good.id, result(good, "again")),
            (wrong.id, result(good)),
        ],
        durable=False,
    )
    assert isinstance(outcomes[0], MalformedEvent) and "partition 1" in str(outcomes[0])
    assert outcomes[1:5] == ["accepted", "ended", "unknown", "ended"]
    assert isinstance(outcomes[5], MalformedEvent) and "event id" in str(outcomes[5])
    kept = backend.log.find_event(protocol.task_result_id(good.id))
    assert kept is not None and orjson.loads(kept.value)["data"]["output"] == "done"
    assert sum(backend.log.end_offset(p) for p in range(backend.log.partitions)) == 1
    # the refused one is still open: its right result is taken
    assert backend.tasks.finish_many("w1", [(wrong.id, result(wrong))]) == ["accepted"]
    assert backend.tasks.finish_many("w1", []) == []
    with pytest.raises(ConfigError, match="worker"):
        backend.tasks.finish_many("", [(wrong.id, result(wrong))])


def test_a_result_from_a_worker_whose_lease_ran_out_is_accepted(queue_subject: Subject) -> None:
    queue = queue_subject.backend.tasks
    record = attempt(1)
    publish(queue_subject, record)
    queue.claim(["default"], "slow", 1, 0.05)
    time.sleep(0.1)
    assert queue.finish(record.id, "slow", result(record)) == "accepted"


def test_an_ended_attempt_is_not_claimed_and_its_result_refused(queue_subject: Subject) -> None:
    backend = queue_subject.backend
    held, waiting = attempt(1), attempt(2)
    publish(queue_subject, held, waiting)
    backend.tasks.claim(["default"], "w1", 1, 30.0)
    end(queue_subject, held, waiting)
    assert backend.tasks.claim(["default"], "w2", 5, 30.0) == []
    assert backend.tasks.finish(held.id, "w1", result(held)) == "ended"
    assert backend.tasks.finish(waiting.id, "w1", result(waiting)) == "ended"
    assert not backend.tasks.heartbeat(held.id, "w1", 30.0)
    assert backend.log.find_event(protocol.task_result_id(held.id)) is None


def test_finish_of_an_attempt_never_published_is_unknown(queue_subject: Subject) -> None:
    never = attempt(9)
    assert queue_subject.backend.tasks.finish(never.id, "w", result(never)) == "unknown"
    assert queue_subject.backend.log.find_event(protocol.task_result_id(never.id)) is None


def test_the_request_of_an_attempt_is_found_by_its_id_open_or_ended(
    queue_subject: Subject,
) -> None:
    """What lets any HTTP API process build the result of any attempt."""
    queue = queue_subject.backend.tasks
    record, other = attempt(1), attempt(2)
    publish(queue_subject, record, other)
    assert queue.request(record.id) == record.request
    end(queue_subject, other)
    assert queue.request(other.id) == other.request
    assert queue.request(attempt(9).id) is None


def test_bad_arguments_are_refused_and_change_nothing(queue_subject: Subject) -> None:
    queue = queue_subject.backend.tasks
    record, other = attempt(1), attempt(2)
    publish(queue_subject, record, other)
    for queues, worker, limit, lease in [
        ("default", "w", 1, 30.0),  # a str, not a list of names
        (["default"], "", 1, 30.0),
        (["default"], "w", True, 30.0),
        (["default"], "w", 1, 0),
        (["default"], "w", 1, float("nan")),
        ([""], "w", 1, 30.0),
    ]:
        with pytest.raises(ConfigError, match=r"queue|worker|limit|lease"):
            queue.claim(queues, worker, limit, lease)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lease"):
        queue.heartbeat(record.id, "w", -1)
    assert queue.claim(["default"], "w", 0, 30.0) == []
    # a result built for another attempt would be applied to that one
    with pytest.raises(MalformedEvent, match="event id"):
        queue.finish(record.id, "w", result(other))
    assert queue_subject.backend.log.find_event(protocol.task_result_id(other.id)) is None
    assert len(queue.claim(["default"], "w", 5, 30.0)) == 2  # nothing was claimed


def test_publishing_the_same_attempt_again_changes_nothing(queue_subject: Subject) -> None:
    queue = queue_subject.backend.tasks
    record = attempt(1)
    publish(queue_subject, record)
    queue.claim(["default"], "w1", 1, 30.0)
    publish(queue_subject, record)
    assert queue.claim(["default"], "w2", 1, 30.0) == []  # still w1's


def test_subscribers_are_woken_when_attempts_are_published(queue_subject: Subject) -> None:
    woken = threading.Event()
    unsubscribe = queue_subject.backend.tasks.subscribe(woken.set)
    try:
        publish(queue_subject, attempt(1))
        assert woken.wait(10)
    finally:
        unsubscribe()
    woken.clear()
    publish(queue_subject, attempt(2))
    assert not woken.wait(0.1)  # unsubscribed
