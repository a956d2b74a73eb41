"""Remote tasks on Kafka against the real broker: the engine's commit publishes a batch's
attempts to their queue's topic in its transaction, and ``KafkaBackend.tasks`` hands them
to workers through the queue's consumer group."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from overture import protocol, tasks
from overture.backends.kafka.backend import KafkaBackend
from overture.backends.kafka.group import Committer
from overture.backends.kafka.queues import TaskTopics
from overture.errors import BrokerUnavailable, ConfigError, Fenced
from overture.ports import Batch, InstanceRow, partition_for

from ..conftest import kafka_url
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
        # the task is produced, then a changelog record too large for Kafka fails the
        # transaction, which is aborted
        huge = InstanceRow("i", "p", 1, None, "running", 0, 0.0, 0.0, "t", result="x" * 2_000_000)
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
    finally:
        committer.close()
        backend.close()


def test_an_invalid_queue_name_is_refused_before_the_transaction(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    committer = Committer(backend.settings, 2, 0, TaskTopics(backend.settings, 2))
    try:
        bad = request("i1", queue="no/slashes")
        with pytest.raises(ConfigError, match="cannot be a Kafka topic name"):
            committer.commit(Batch(group="engine", tasks={bad.id: bad}))
        good = request("i2")
        committer.commit(Batch(group="engine", tasks={good.id: good}))  # the producer is fine
        assert [m.key() for m in task_records(backend, "q")] == [good.id.encode()]
        with pytest.raises(ConfigError, match="cannot be a Kafka topic name"):
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
        assert queue.finish(c.id, "w1", tasks.failed(CODEC, *parsed(c), "E", "x", retryable=False))
        assert queue.finish(a.id, "w1", result_of(a)) == "accepted"
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
