"""Task attempts as an engine publishes them (``Batch.tasks``), for the queue and worker
tests: the real request event, committed through the engine's store."""

from __future__ import annotations

import time
from typing import Any

from overture import protocol
from overture.codec import Codec
from overture.events import Envelope
from overture.ports import Batch, EngineBackend, TaskRecord


def attempt_record(
    task: str = "t.echo",
    *,
    instance: str = "inst-1",
    seq: int = 1,
    attempt: int = 1,
    queue: str = protocol.DEFAULT_QUEUE,
    input: Any = None,
    deadline: float | None = None,
    partitionkey: str | None = "k1",
    partition: int = 0,
    source: str = "overture/test-engine",
) -> TaskRecord:
    """The queue entry of one attempt: its ``overture.task.requested`` CloudEvent."""
    attempt_id = protocol.task_attempt_id(instance, seq, attempt)
    message = protocol.TaskRequest(
        task=task,
        queue=queue,
        input=input,
        instance_id=instance,
        seq=seq,
        attempt=attempt,
        idempotency_key=f"{instance}:{seq}",
        deadline=deadline,
        reply=protocol.Reply(partitionkey=partitionkey, partition=partition),
    )
    envelope = Envelope(
        type=protocol.TASK_REQUESTED,
        data=message.model_dump(mode="json"),
        id=attempt_id,
        source=source,
        subject=task,
        partitionkey=partitionkey,
    )
    return TaskRecord(attempt_id, queue, Codec().to_bytes(envelope), deadline)


def publish(engine: EngineBackend, *records: TaskRecord) -> None:
    """Commit the attempts as the batch that scheduled them would."""
    batch = Batch("engine")
    for record in records:
        batch.tasks[record.id] = record
    engine.store.commit(batch)


def end(engine: EngineBackend, *attempt_ids: str) -> None:
    """Commit the end of the attempts (a result applied, a deadline passed)."""
    batch = Batch("engine")
    for attempt_id in attempt_ids:
        batch.tasks[attempt_id] = None
    engine.store.commit(batch)


def soon(seconds: float = 30.0) -> float:
    """A deadline ``seconds`` from now."""
    return time.time() + seconds
