"""The Node.js worker of ``examples/node`` (kafkajs, a real ``node`` process) answers
attempts an engine's commit published, as the task protocol says: result events on the
events topic with the right id, key and partition, which the engine's reader reads."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import orjson

from overture import protocol, tasks
from overture.backends.kafka.backend import KafkaBackend
from overture.binding import STRUCTURED_JSON
from overture.ports import partition_for

from ..conftest import kafka_url
from .taskkit import CODEC, claim_until, engine_stores, publish, request, task_records
from .test_tasks import committed_offsets, wait_for


def worker_command(bootstrap: str, namespace: str, *extra: str) -> list[str]:
    """``node kafka-worker.mjs`` serving queue ``q`` of ``namespace``."""
    command = ["node", "kafka-worker.mjs", "--brokers", bootstrap, "--namespace", namespace]
    return [*command, "--queue", "q", *extra]


def test_the_node_worker_answers_committed_attempts(
    kafka_bootstrap: str, node_worker: Path
) -> None:
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    namespace = backend.settings.namespace
    attempts = {
        "echo": request("i1", task="echo", input={"a": [1, 2.5, "x"]}, key="k1", partition=1),
        "notify": request(
            "i2", seq=4, attempt=2, task="notify.rider", input={"rider_id": "r7"}, key="r7"
        ),
        "bad input": request("i3", task="notify.rider", input={}, key=None, partition=1),
        "retryable": request("i4", task="unavailable", key="k4"),
        "unknown": request("i5", task="no.such.task", key="k5", partition=1),
        "expired": request("i6", task="echo", deadline=time.time() - 1),
    }
    with engine_stores(url) as stores:
        publish(stores[0], *attempts.values())
    worker = subprocess.Popen(
        worker_command(kafka_bootstrap, namespace),
        cwd=node_worker,
        stdout=subprocess.DEVNULL,
    )
    try:
        results: dict[str, tuple[int, str | None, object]] = {}

        def answered() -> bool:
            for p in range(2):
                for record in backend.log.read(p, 0, 100):
                    assert record.error is None, record.error
                    assert record.wire is not None
                    assert ("content-type", STRUCTURED_JSON.encode()) in record.wire.headers
                    envelope = CODEC.from_bytes(record.value)
                    results[envelope.id] = (record.partition, record.key, envelope)
            return len(results) >= 5

        wait_for(answered, timeout=90)
        # every offset committed once its result was sent (the expired one skipped)
        ends: dict[int, int] = {}
        for message in task_records(backend, "q"):
            ends[message.partition()] = message.offset() + 1

        def committed() -> bool:
            offsets = committed_offsets(kafka_bootstrap, namespace, "q")
            return all(offsets[p] == end for p, end in ends.items())

        wait_for(committed)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        backend.close()

    assert len(results) == 5  # no result for the attempt past its deadline
    messages = {}
    for name, attempt in attempts.items():
        if name == "expired":
            continue
        partition, key, envelope = results[protocol.task_result_id(attempt.id)]
        _, asked = tasks.parse_request(CODEC, attempt.request)
        assert (partition, key) == (asked.reply.partition, asked.reply.partitionkey), name
        assert envelope.partitionkey == asked.reply.partitionkey
        assert envelope.source == "/overture/test" and envelope.subject == asked.task
        message = protocol.parse_control(envelope.type, envelope.data)
        assert (message.instance_id, message.seq, message.attempt) == (  # type: ignore[union-attr]
            asked.instance_id,
            asked.seq,
            asked.attempt,
        )
        messages[name] = message
    assert messages["echo"] == protocol.TaskCompletion(
        instance_id="i1", seq=0, attempt=1, output={"a": [1, 2.5, "x"]}
    )
    notify = messages["notify"]
    assert isinstance(notify, protocol.TaskCompletion)
    assert notify.output == {"rider_id": "r7", "delivered": True, "notification": "i2:4"}
    failures = {
        name: (m.error.type, m.retryable)  # type: ignore[union-attr]
        for name, m in messages.items()
        if isinstance(m, protocol.TaskFailure)
    }
    assert failures == {
        "bad input": ("BadInput", False),
        "retryable": ("Error", True),
        "unknown": ("UnknownTask", False),
    }


def test_python_and_node_workers_share_one_group(kafka_bootstrap: str, node_worker: Path) -> None:
    # kafkajs names its assignor "RoundRobinAssigner", librdkafka "roundrobin": the
    # worker registers it under librdkafka's name, so both can join the queue's group
    url = kafka_url(kafka_bootstrap)
    backend = KafkaBackend(url)
    queue = backend.tasks
    namespace = backend.settings.namespace
    assert queue.claim(["q"], "py", 1, 30.0) == []
    wait_for(lambda: queue.assigned("q") == [0, 1])
    lines: list[dict[str, object]] = []
    worker = subprocess.Popen(
        worker_command(kafka_bootstrap, namespace),
        cwd=node_worker,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    stdout = worker.stdout
    reading = threading.Thread(target=lambda: lines.extend(orjson.loads(x) for x in stdout))
    reading.start()
    try:

        def split() -> bool:
            joined = [x for x in lines if x["event"] == "joined"]
            return (
                len(queue.assigned("q")) == 1
                and bool(joined)
                and joined[-1]["partitions"] == [1 - queue.assigned("q")[0]]
            )

        wait_for(split, timeout=60)
        mine = queue.assigned("q")[0]
        attempts = [request(f"i{n}", task="echo", input=n) for n in range(12)]
        with engine_stores(url) as stores:
            publish(stores[0], *attempts)
        ours = [a for a in attempts if partition_for(a.id, 2) == mine]
        theirs = {a.id for a in attempts} - {a.id for a in ours}
        assert ours and theirs
        for task in claim_until(queue, len(ours), worker="py"):
            envelope, message = tasks.parse_request(CODEC, task.request)
            assert queue.finish(task.id, "py", tasks.completed(CODEC, envelope, message, 0)) == (
                "accepted"
            )
        wait_for(lambda: {x.get("id") for x in lines if x["event"] == "answered"} == theirs)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        reading.join(timeout=10)
        stdout.close()
        backend.close()


def test_a_task_longer_than_the_session_timeout_runs_once(
    kafka_bootstrap: str, node_worker: Path
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=1)
    backend = KafkaBackend(url)
    namespace = backend.settings.namespace
    long = request("i1", task="sleep", input={"seconds": 8})
    after = request("i2", task="echo", input="next")
    with engine_stores(url) as stores:
        publish(stores[0], long, after)
    lines: list[dict[str, object]] = []
    worker = subprocess.Popen(
        worker_command(kafka_bootstrap, namespace, "--session-timeout", "6000"),
        cwd=node_worker,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    stdout = worker.stdout
    reading = threading.Thread(target=lambda: lines.extend(orjson.loads(x) for x in stdout))
    reading.start()
    try:
        answered = {protocol.task_result_id(t.id) for t in (long, after)}
        wait_for(
            lambda: {CODEC.from_bytes(r.value).id for r in backend.log.read(0, 0, 10)} == answered,
            timeout=60,
        )
        time.sleep(1.0)
        # it stayed in the group throughout (kafkajs heartbeats only between messages:
        # the worker heartbeats while a task runs), so nothing ran twice
        assert len(backend.log.read(0, 0, 10)) == 2
        assert [x["event"] for x in lines].count("joined") == 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        reading.join(timeout=10)
        stdout.close()
        backend.close()
