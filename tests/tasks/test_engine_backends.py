"""The engine's side of remote tasks on the durable backends (SQLite; Kafka on a real
broker) without a task queue: the task rows an engine commits are the attempts, and a
worker that writes its result straight to the log (as a Kafka worker does: the events
topic, the instance's key and partition) is enough to drive them. (The same tests
through the queues are in the other modules here, on every backend.)

What this pins there: task rows survive a restart (on Kafka: restored from the
changelog), a result reaches the partition of its instance and is applied once, a
result appended while the engine is down is applied after it, and a stale or duplicate
result (Kafka's log does not deduplicate event ids) changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture import protocol
from overture.codec import Codec
from overture.events import Envelope
from overture.ports import NewRecord, WorkRow
from overture.testing import Harness

from ..conftest import kafka_url

Factory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(
    params=[("sqlite", 10_000), ("sqlite", 0), ("kafka", 10_000)],
    ids=["sqlite", "sqlite-replay", "kafka"],
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    kind, cache_size = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"))

    @asynccontextmanager
    async def make(app: ov.App) -> AsyncIterator[Harness]:
        async with Harness(app, url, cache_size=cache_size) as h:
            yield h

    return make


def call_app() -> ov.App:
    app = ov.App("durable-tasks")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        retry = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=10))
        return await ctx.call("t", event.data, timeout=timedelta(seconds=30), retry=retry)

    return app


def task_rows(h: Harness) -> dict[str, WorkRow]:
    """The task rows the engines committed, by instance id."""
    return {r.instance_id or "": r for r in h.backend.store.work() if r.kind == "task"}


def answer(
    h: Harness, row: WorkRow, output: Any, *, dedup: bool = True, partition: int | None = None
) -> None:
    """Append attempt ``row.attempt``'s result as a worker writing to the log would,
    with the instance's key and partition (the request's ``reply``)."""
    assert row.instance_id is not None and row.seq is not None
    instance = h.backend.store.instance(row.instance_id)
    assert instance is not None
    attempt_id = protocol.task_attempt_id(row.instance_id, row.seq, row.attempt)
    envelope = Envelope(
        type=protocol.TASK_COMPLETED,
        data={
            "instance_id": row.instance_id,
            "seq": row.seq,
            "attempt": row.attempt,
            "output": output,
        },
        id=protocol.task_result_id(attempt_id),
        source="/log-worker",
        partitionkey=instance.key,
    )
    h.backend.log.append(
        [
            NewRecord(
                instance.key,
                Codec(h.app).to_bytes(envelope),
                envelope.id if dedup else None,
                envelope.type,
                partition=instance.partition if partition is None else partition,
            )
        ]
    )


async def test_results_reach_their_instances_on_every_partition(harness: Factory) -> None:
    async with harness(call_app()) as h:
        for n in range(6):
            h.client.send("go", {"n": n}, key=f"k{n}")
        await h.idle()
        rows = task_rows(h)
        assert len(rows) == 6
        for row in rows.values():
            instance = h.backend.store.instance(row.instance_id or "")
            assert instance is not None
            answer(h, row, instance.key)
        await h.idle()
        results = {i.key: (i.status, i.result) for i in h.client.instances()}
        assert results == {f"k{n}": ("completed", f"k{n}") for n in range(6)}
        assert task_rows(h) == {}


async def test_a_result_appended_while_the_engine_is_down_is_applied_once(
    harness: Factory,
) -> None:
    async with harness(call_app()) as h:
        h.client.send("go", {"n": 1}, key="k")
        await h.idle()
        (row,) = task_rows(h).values()
        await h.host.abandon()
        answer(h, row, "while down")
        answer(h, row, "a duplicate", dedup=False)
        await h.restart()
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "while down")
        assert len([e for e in h.client.journal(instance.id) if e["k"] == "res"]) == 1


async def test_task_rows_survive_restarts_through_timeout_and_backoff(harness: Factory) -> None:
    async with harness(call_app()) as h:
        h.client.send("go", {"n": 1}, key="k")
        await h.idle()
        (first,) = task_rows(h).values()
        assert first.attempt == 1 and first.due == h.clock.now() + 30
        await h.restart()
        await h.advance(30)  # the reloaded row gives attempt 1 up at its deadline
        (backoff,) = task_rows(h).values()
        assert backoff.attempt == 2 and backoff.payload == b"backoff"
        await h.restart()
        await h.advance(10)  # the reloaded backoff row publishes attempt 2
        (second,) = task_rows(h).values()
        assert second.attempt == 2 and second.payload == b"published:default"
        answer(h, first, "stale")  # attempt 1's late result
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "running"
        answer(h, second, "fresh")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "fresh")


async def test_a_result_on_another_partition_than_the_reply_is_dead_lettered(
    harness: Factory,
) -> None:
    async with harness(call_app()) as h:
        h.client.send("go", {"n": 1}, key="k")
        await h.idle()
        (row,) = task_rows(h).values()
        instance = h.backend.store.instance(row.instance_id or "")
        assert instance is not None
        wrong = (instance.partition + 1) % h.backend.log.partitions
        answer(h, row, "astray", dedup=False, partition=wrong)
        await h.idle()
        if h.backend.capabilities.partitioned:
            # the engine of the other partition holds no such instance: it says so
            (letter,) = h.client.dead_letters()
            assert "a result must be appended with the request's reply" in letter.reason
            assert h.client.instance(instance.id).status == "running"
            answer(h, row, "home")
            await h.idle()
            assert h.client.instance(instance.id).result == "home"
        else:  # one engine holds every partition: the result is simply applied
            assert h.client.dead_letters() == []
            assert h.client.instance(instance.id).result == "astray"
