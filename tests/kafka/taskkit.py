"""Helpers of the Kafka task tests: task requests, an engine store to commit them
through, and reading a task topic back."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Message

from overture import protocol
from overture.backends.kafka.backend import KafkaBackend
from overture.backends.kafka.group import PartitionBackend
from overture.backends.kafka.reading import read_to_end, reader
from overture.codec import Codec
from overture.ports import Batch, ClaimedTask, EngineBackend, TaskQueue, TaskRecord, partition_for

from ..tasks.attempts import attempt_record

CODEC = Codec()


def request(
    instance: str,
    seq: int = 0,
    attempt: int = 1,
    *,
    task: str = "t.echo",
    queue: str = "q",
    input: Any = None,
    deadline: float | None = None,
    key: str | None = "k1",
    partition: int = 0,
) -> TaskRecord:
    """The queue entry of one attempt, as an engine publishes it (``attempt_record``
    with this module's defaults)."""
    return attempt_record(
        task,
        instance=instance,
        seq=seq,
        attempt=attempt,
        queue=queue,
        input=input,
        deadline=deadline,
        partitionkey=key,
        partition=partition,
        source="/overture/test",
    )


def on_partition(prefix: str, partition: int, partitions: int = 2) -> str:
    """An instance id whose first attempt's record lands on ``partition``."""
    for n in range(1000):
        instance = f"{prefix}{n}"
        if partition_for(protocol.task_attempt_id(instance, 0, 1), partitions) == partition:
            return instance
    raise AssertionError("no such instance id")


@contextmanager
def engine_stores(url: str) -> Iterator[dict[int, PartitionBackend]]:
    """The engine side of a namespace: every partition's engine backend, once the engine
    group assigned them all to this process."""
    backend = KafkaBackend(url)
    assigned: dict[int, PartitionBackend] = {}

    def on_assign(backends: Any) -> None:
        assigned.update(backends)

    def on_revoke(partitions: list[int]) -> None:
        for p in partitions:
            assigned.pop(p, None)

    membership = backend.claim("engine", on_assign, on_revoke, lambda error: None)
    try:
        deadline = time.monotonic() + 60
        while len(assigned) < backend.partitions:
            assert time.monotonic() < deadline, "the engine group assigned no partitions"
            time.sleep(0.05)
        yield assigned
    finally:
        membership.close()
        backend.close()


def publish(store: EngineBackend, *tasks: TaskRecord, ended: Sequence[str] = ()) -> None:
    """Commit a batch that publishes ``tasks`` (and ends the attempts ``ended``)."""
    batch = Batch(group="engine", tasks={t.id: t for t in tasks})
    batch.tasks.update(dict.fromkeys(ended))
    store.store.commit(batch)


def task_records(backend: KafkaBackend, queue: str) -> list[Message]:
    """Every committed record of ``queue``'s topic."""
    consumer = reader(backend.settings, "check-tasks")
    topic = protocol.tasks_topic(backend.settings.namespace, queue)
    try:
        return list(read_to_end(consumer, topic, dict.fromkeys(range(backend.partitions), 0)))
    finally:
        consumer.close()


def claim_until(
    queue: TaskQueue, count: int, *, worker: str = "w", lease: float = 30.0, timeout: float = 60
) -> list[ClaimedTask]:
    """Claim until ``count`` attempts were handed out (the first claim joins the group)."""
    out: list[ClaimedTask] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"claimed {len(out)} of {count} attempts"
        out += queue.claim(["q"], worker, count - len(out), lease)
        time.sleep(0.02)
    return out
