"""Remote tasks on Kafka against the real broker: the engine's commit publishes a batch's
attempts to their queue's topic in its transaction, and ``KafkaBackend.tasks`` hands them
to workers through the queue's consumer group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from overture import protocol, tasks
from overture.backends.kafka.backend import KafkaBackend
from overture.backends.kafka.group import Committer
from overture.backends.kafka.queues import TaskTopics
from overture.backends.kafka.taskqueue import KafkaTaskQueue
from overture.errors import BrokerUnavailable, ConfigError, Fenced
from overture.ports import Batch, InstanceRow, partition_for

from ..conftest import REPO_ROOT, kafka_url
from .taskkit import CODEC, claim_until, engine_stores, on_partition, publish, request, task_records


def test_a_committed_batch_puts_its_attempts_on_the_queue_topic(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    first, second = request("i1", queue="mail"), request("i2", seq=3, queue="mail")
    with engine_stores(url) as stores:
        # an ended attempt (None) publishes nothing
        publish(stores[0], first, second, ended=[protocol.task_attempt_id("i0", 0, 1)])
        backend = KafkaBackend(url)
        try:
            records = task_records(backend, "mail")
            topic = protocol.tasks_topic(backend.settings.namespace, "mail")
            metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic)
        finally:
            backend.close()
    assert len(metadata.topics[topic].partitions) == 2  # the events topic's count
    by_key = {m.key(): m for m in records}
    assert set(by_key) == {first.id.encode(), second.id.encode()}
    for task in (first, second):
        message = by_key[task.id.encode()]
        assert message.value() == task.request  # structured mode: the request as it is
        assert message.headers() == [("content-type", b"application/cloudevents+json")]
        assert message.partition() == partition_for(task.id, 2)
        envelope, parsed = tasks.parse_request(CODEC, message.value())
        assert (envelope.id, parsed.instance_id) == (task.id, task.id.split(":")[1])


def test_an_aborted_or_fenced_commit_publishes_no_attempt(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    topics = TaskTopics(backend.settings, 2)
    committer = Committer(backend.settings, 2, 0, topics)
    try:
        # the task reaches the broker, whose changelog topic then refuses a record too
        # large for it: the transaction fails and is aborted
        resource = ConfigResource(
            ResourceType.TOPIC,
            backend.settings.changelog_topic,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", "4096", incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(10)
        huge = InstanceRow("i", "p", 1, None, "running", 0, 0.0, 0.0, "t", result="x" * 20_000)
        aborted = request("aborted")
        with pytest.raises(BrokerUnavailable):
            committer.commit(
                Batch(group="engine", tasks={aborted.id: aborted}, instances={"i": huge})
            )
        # another member takes the partition over: the old producer is fenced
        successor = Committer(backend.settings, 2, 0, topics)
        fenced = request("fenced")
        with pytest.raises(Fenced):
            committer.commit(Batch(group="engine", tasks={fenced.id: fenced}))
        kept = request("kept")
        successor.commit(Batch(group="engine", tasks={kept.id: kept}))
        assert [m.key() for m in task_records(backend, "q")] == [kept.id.encode()]
        successor.close()
        # and a worker is handed only that one (its consumer reads committed records)
        assert [t.id for t in claim_until(backend.tasks, 1)] == [kept.id]
        time.sleep(0.5)
        assert backend.tasks.claim(["q"], "w", 10, 30.0) == []
    finally:
        committer.close()
        backend.close()


def test_an_invalid_queue_name_is_refused_before_the_transaction(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    committer = Committer(backend.settings, 2, 0, TaskTopics(backend.settings, 2))
    try:
        bad = request("i1", queue="no/slashes")
        with pytest.raises(ConfigError, match="may hold only"):
            committer.commit(Batch(group="engine", tasks={bad.id: bad}))
        good = request("i2")
        committer.commit(Batch(group="engine", tasks={good.id: good}))  # the producer is fine
        assert [m.key() for m in task_records(backend, "q")] == [good.id.encode()]
        with pytest.raises(ConfigError, match="may hold only"):
            backend.tasks.claim(["a b"], "w", 1, 10.0)
    finally:
        committer.close()
        backend.close()


def committed_offsets(bootstrap: str, namespace: str, queue: str) -> dict[int, int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": protocol.worker_group(namespace, queue)}
    )
    topic = protocol.tasks_topic(namespace, queue)
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_claim_heartbeat_finish_and_lease_expiry(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    a = request(on_partition("a", 0), input={"n": 1}, key="ka", partition=1)
    b = request(on_partition("b", 1), input={"n": 2}, key="kb", partition=0)
    c = request(on_partition("c", 1), input={"n": 3}, key=None, partition=1)
    past = request(on_partition("d", 0), deadline=time.time() - 1)
    backend = KafkaBackend(url)
    queue = backend.tasks
    woken: list[int] = []
    queue.subscribe(lambda: woken.append(1))
    try:
        assert queue.claim(["q"], "w0", 10, 30.0) == []  # joins the group
        wait_for(lambda: queue.assigned("q") == [0, 1])
        with engine_stores(url) as stores:
            publish(stores[0], past, a)
            publish(stores[1], b, c)
        held = claim_until(queue, 3, worker="w1")
        assert {t.id for t in held} == {a.id, b.id, c.id}  # not the one past its deadline
        assert woken
        by_id = {t.id: t for t in held}
        assert by_id[a.id].request == a.request and by_id[a.id].queue == "q"
        assert queue.claim(["q"], "w2", 10, 30.0) == []  # all held
        assert queue.request(a.id) == a.request  # held here: any answer can be built
        assert queue.request("task:elsewhere:1:1") is None
        assert queue.finish(past.id, "w1", result_of(past)) == "ended"

        # heartbeats: only the holder's renews
        assert queue.heartbeat(a.id, "w1", 30.0)
        assert not queue.heartbeat(a.id, "w2", 30.0)

        # a lease that runs out re-hands the attempt to the next claim
        assert queue.heartbeat(b.id, "w1", 0.2)
        time.sleep(0.3)
        (again,) = queue.claim(["q"], "w2", 10, 30.0)
        assert again.id == b.id
        assert not queue.heartbeat(b.id, "w1", 30.0)  # w1 lost it ...
        assert queue.finish(b.id, "w1", result_of(b)) == "accepted"  # ... its result counts
        assert queue.finish(b.id, "w2", result_of(b)) == "ended"  # a second one does not
        assert not queue.heartbeat(b.id, "w2", 30.0)

        # bad input: a result that is not this attempt's is refused and changes nothing
        with pytest.raises(ConfigError, match="must be an"):
            queue.finish(a.id, "w1", result_of(b))
        with pytest.raises(ConfigError, match="lease"):
            queue.claim(["q"], "w1", 1, 0)
        with pytest.raises(ConfigError, match="limit"):
            queue.claim(["q"], "w1", 0, 1.0)
        assert queue.heartbeat(a.id, "w1", 30.0)
        assert queue.finish("task:nobody:0:1", "w1", result_of(request("nobody"))) == "unknown"

        # offsets: partition 1 holds b (finished) and c (open), in that order; partition
        # 0 the expired attempt (over) and a (open): nothing is committed past an open one
        namespace = backend.settings.namespace
        wait_for(lambda: committed_offsets(kafka_bootstrap, namespace, "q") == {0: 1, 1: 1})
        time.sleep(0.3)  # and it stays there
        assert committed_offsets(kafka_bootstrap, namespace, "q") == {0: 1, 1: 1}
        # several at once (a worker's coalesced finishes), each as if alone: a result
        # that is not its attempt's fails alone, and a second result is refused
        failure = tasks.failed(CODEC, *parsed(c), "E", "x", retryable=False)
        outcomes = queue.finish_many(
            "w1",
            [
                (c.id, failure),
                (a.id, result_of(b)),
                ("task:nobody:0:1", result_of(request("nobody"))),
                (a.id, result_of(a)),
                (a.id, result_of(a)),
            ],
        )
        assert outcomes[0] == "accepted" and isinstance(outcomes[1], ConfigError)
        assert outcomes[2:] == ["unknown", "accepted", "ended"]
        wait_for(lambda: committed_offsets(kafka_bootstrap, namespace, "q") == {0: 2, 1: 2})
        # the results are on the events topic, where the requests' replies say
        results = {}
        for p in range(2):
            for record in backend.log.read(p, 0, 100):
                envelope = CODEC.from_bytes(record.value)
                results[envelope.id] = (record.partition, record.key, envelope)
        assert set(results) == {protocol.task_result_id(t.id) for t in (a, b, c)}
        assert results[protocol.task_result_id(a.id)][:2] == (1, "ka")
        assert results[protocol.task_result_id(b.id)][:2] == (0, "kb")
        assert results[protocol.task_result_id(c.id)][:2] == (1, None)
        failure = results[protocol.task_result_id(c.id)][2]
        message = protocol.parse_control(failure.type, failure.data)
        assert isinstance(message, protocol.TaskFailure) and not message.retryable
    finally:
        backend.close()


def parsed(task: object) -> tuple[object, protocol.TaskRequest]:
    return tasks.parse_request(CODEC, task.request)  # type: ignore[attr-defined]


def result_of(task: object) -> object:
    envelope, message = parsed(task)
    return tasks.completed(CODEC, envelope, message, {"done": message.input})  # type: ignore[arg-type]


def test_two_claimers_in_one_group_share_the_partitions(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    one, two = KafkaBackend(url), KafkaBackend(url)
    try:
        # both join the queue's group, which gives each one partition
        def settled() -> bool:
            one.tasks.claim(["q"], "w1", 1, 30.0)
            two.tasks.claim(["q"], "w2", 1, 30.0)
            first, second = one.tasks.assigned("q"), two.tasks.assigned("q")
            return len(first) == len(second) == 1 and first != second

        wait_for(settled, timeout=60)
        mine = {1: one.tasks.assigned("q"), 2: two.tasks.assigned("q")}
        attempts = [request(f"i{n}") for n in range(20)]
        with engine_stores(url) as stores:
            publish(stores[0], *attempts)
        got: dict[int, list[str]] = {1: [], 2: []}
        deadline = time.monotonic() + 30
        while len(got[1]) + len(got[2]) < 20:
            assert time.monotonic() < deadline
            got[1] += [t.id for t in one.tasks.claim(["q"], "w1", 20, 30.0)]
            got[2] += [t.id for t in two.tasks.claim(["q"], "w2", 20, 30.0)]
            time.sleep(0.02)
        assert sorted(got[1] + got[2]) == sorted(t.id for t in attempts)  # each once
        for member in (1, 2):
            assert got[member], "one member got nothing"
            assert {partition_for(i, 2) for i in got[member]} <= set(mine[member])
    finally:
        one.close()
        two.close()


def test_a_claimer_killed_before_finishing_leaves_its_attempt_to_the_next(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap)
    done = request(on_partition("finish", 0))
    left = request(on_partition("left", 1))
    with engine_stores(url) as stores:
        publish(stores[0], done, left)
    with subprocess.Popen(
        [sys.executable, "-m", "tests.kafka.claimer", url, "2"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.split() == sorted([done.id, left.id]), line
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
    survivor = KafkaBackend(url)
    try:
        (again,) = claim_until(survivor.tasks, 1, worker="next", timeout=90)
        assert again.id == left.id  # the finished one's offset was committed
        time.sleep(1.0)
        assert survivor.tasks.claim(["q"], "next", 10, 30.0) == []
    finally:
        survivor.close()


def test_a_record_that_is_no_task_request_is_passed_over(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    namespace = backend.settings.namespace
    try:
        assert backend.tasks.claim(["q"], "w", 1, 30.0) == []  # creates the topic, joins
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        topic = protocol.tasks_topic(namespace, "q")
        producer.produce(topic, b'{"type": "order.placed", "id": "e1"}', b"x", partition=0)
        producer.produce(topic, b"not json", partition=0)
        producer.flush(10)
        real = request(on_partition("real", 0))
        with engine_stores(url) as stores:
            publish(stores[0], real)
        (task,) = claim_until(backend.tasks, 1)
        assert task.id == real.id
        assert backend.tasks.finish(real.id, "w", result_of(real)) == "accepted"
        # nothing holds the partition's offset back: it passes all three records
        wait_for(lambda: committed_offsets(kafka_bootstrap, namespace, "q")[0] == 3)
    finally:
        backend.close()


def test_a_queue_holds_at_most_its_buffer_and_fetches_more_as_attempts_finish(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    queue = KafkaTaskQueue(backend.settings, 2, TaskTopics(backend.settings, 2), buffer=8)
    try:
        assert queue.claim(["q"], "w", 1, 30.0) == []
        wait_for(lambda: queue.assigned("q") == [0, 1])
        attempts = [request(f"i{n}") for n in range(60)]
        with engine_stores(url) as stores:
            publish(stores[0], *attempts)
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < 60:
            assert time.monotonic() < deadline, f"{len(seen)} of 60"
            time.sleep(0.3)  # time to fetch all there is room for
            held = queue.claim(["q"], "w", 100, 30.0)
            assert len(held) <= 8  # never more than the buffer
            for task in held:
                assert queue.finish(task.id, "w", result_of(task)) == "accepted"
            seen += [t.id for t in held]
        assert sorted(seen) == sorted(a.id for a in attempts)
    finally:
        queue.close()
        backend.close()


def test_attempts_held_through_a_rebalance(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    one, two = KafkaBackend(url), KafkaBackend(url)
    namespace = one.settings.namespace
    x, y = request(on_partition("x", 0)), request(on_partition("y", 1))
    try:
        assert one.tasks.claim(["q"], "w1", 1, 30.0) == []
        wait_for(lambda: one.tasks.assigned("q") == [0, 1])
        with engine_stores(url) as stores:
            publish(stores[0], x, y)
        assert {t.id for t in claim_until(one.tasks, 2, worker="w1")} == {x.id, y.id}
        # a second member joins: the group takes both partitions back and gives one
        # to each; the attempts stay with their worker here
        assert two.tasks.claim(["q"], "w2", 1, 30.0) == []
        wait_for(lambda: len(one.tasks.assigned("q")) == len(two.tasks.assigned("q")) == 1)
        (kept,) = one.tasks.assigned("q")
        mine, theirs = (x, y) if kept == 0 else (y, x)
        # the attempt of the partition it kept is fetched again but not handed out twice
        time.sleep(1.0)
        assert one.tasks.claim(["q"], "w1", 10, 30.0) == []
        assert one.tasks.heartbeat(mine.id, "w1", 30.0)
        # and, running still, it holds its partition's offset back
        assert committed_offsets(kafka_bootstrap, namespace, "q")[kept] < 1
        # the other one is the new owner's now: at least once, it runs it too
        (again,) = claim_until(two.tasks, 1, worker="w2")
        assert again.id == theirs.id
        # results are accepted from both (the engine keeps the first) ...
        for task in (mine, theirs):
            assert one.tasks.finish(task.id, "w1", result_of(task)) == "accepted"
        assert two.tasks.finish(theirs.id, "w2", result_of(theirs)) == "accepted"
        # ... and each partition's offset passes its attempt: the kept one's is joined
        # to its worker's attempt again, so finishing it lets the offset advance
        wait_for(lambda: committed_offsets(kafka_bootstrap, namespace, "q") == {0: 1, 1: 1})
    finally:
        one.close()
        two.close()


def test_a_claim_in_flight_when_the_queue_closes_leaves_no_consumer_behind(
    kafka_bootstrap: str,
) -> None:
    """A first claim of a queue looks its topic up (slow: a request to the broker) before
    it makes the queue's consumer; a close() meanwhile must not be outlived by a
    consumer made after it, never closed, whose group membership would hold the queue's
    partitions for as long as the process lives. The real broker, the threads ordered
    by a hook around the real topic lookup."""
    import threading

    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    queue = backend.tasks
    assert isinstance(queue, KafkaTaskQueue)
    looking, closed = threading.Event(), threading.Event()
    lookup = queue._topics.partitions

    def partitions(name: str) -> int:
        looking.set()
        assert closed.wait(30)
        return lookup(name)

    queue._topics.partitions = partitions  # type: ignore[method-assign]
    outcome: list[BaseException | object] = []

    def claim() -> None:
        try:
            outcome.append(queue.claim(["late"], "w", 1, 30.0))
        except BaseException as error:  # the outcome is asserted below
            outcome.append(error)

    claimer = threading.Thread(target=claim)
    claimer.start()
    try:
        assert looking.wait(30)
        backend.close()
        closed.set()
        claimer.join(60)
    finally:
        closed.set()
    (result,) = outcome
    assert isinstance(result, ConfigError) and "closed" in str(result)
    assert queue._queues == {}
    assert not [t for t in threading.enumerate() if t.name == "overture-tasks-late"]
    with pytest.raises(ConfigError, match="closed"):
        queue._send(result_of(request("i9")))  # type: ignore[arg-type]
