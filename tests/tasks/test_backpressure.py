"""Backpressure: an engine keeps at most ``max_open_tasks_per_queue`` open attempts on
each queue; further calls wait durably, in order, and are published as open ones end.

Real engines (``Harness``, virtual clock) on memory (with and without the instance
cache) and SQLite, and the test worker of ``conftest`` over the real ``TaskQueue`` port.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.errors import ConfigError
from overture.runtime.options import EngineOptions
from overture.testing import Harness

from .conftest import Factory, Worker, wall_deadline

LIMIT = 3


@pytest.fixture(
    params=[("memory", 10_000), ("memory", 0), ("sqlite", 10_000)],
    ids=["memory", "memory-replay", "sqlite"],
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    kind, cache_size = request.param
    url = (
        f"memory://{uuid.uuid4().hex}"
        if kind == "memory"
        else f"sqlite:///{tmp_path / 'backpressure.db'}"
    )

    @asynccontextmanager
    async def make(app: ov.App, **kwargs: Any) -> AsyncIterator[Harness]:
        kwargs.setdefault("cache_size", cache_size)
        kwargs.setdefault("max_open_tasks_per_queue", LIMIT)
        async with Harness(app, url, **kwargs) as h:
            yield h

    return make


def call_app(**options: Any) -> ov.App:
    app = ov.App("pressed")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.call("work", event.data, **options)

    @app.process(trigger="other")
    async def other(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.call("work", event.data, queue="other")

    return app


def send(h: Harness, n: int, first: int = 0, trigger: str = "go") -> None:
    for i in range(first, first + n):
        h.client.send(trigger, {"n": i}, key=f"k{i}")


def inputs(attempts: list[Any]) -> list[Any]:
    return [a.request.input["n"] for a in attempts]


async def test_calls_past_the_bound_wait_and_publish_in_order_as_open_ones_end(
    harness: Factory,
) -> None:
    async with harness(call_app()) as h:
        send(h, LIMIT + 2)
        await h.idle()
        worker = Worker(h)
        first = worker.claim(limit=100)
        assert inputs(first) == [0, 1, 2]  # only the bound's worth is on the queue
        assert h.engine.stats["task_attempts"] == LIMIT
        assert h.engine.stats["task_attempts_waited"] == 2
        assert all(i.status == "running" for i in h.client.instances())

        assert worker.complete(first[1], "done") == "accepted"
        await h.idle()
        (released,) = worker.claim(limit=100)  # one ended: the oldest waiting call
        assert released.request.input == {"n": 3}
        assert released.request.attempt == 1
        assert worker.claim(limit=100) == []

        for attempt in [first[0], first[2], released]:
            assert worker.complete(attempt, "done") == "accepted"
        await h.idle()
        (last,) = worker.claim(limit=100)
        assert last.request.input == {"n": 4}
        worker.complete(last, "done")
        await h.idle()
        assert {i.status for i in h.client.instances()} == {"completed"}
        assert h.engine.stats["task_attempts"] == LIMIT + 2


async def test_the_waiting_line_survives_a_restart_in_order(harness: Factory) -> None:
    async with harness(call_app()) as h:
        send(h, LIMIT)
        await h.idle()
        send(h, 4, first=LIMIT)  # a later batch: they wait behind the open ones
        await h.idle()
        await h.restart()
        worker = Worker(h)
        open_ = worker.claim(limit=100)
        assert inputs(open_) == [0, 1, 2]  # still open after the restart, nothing more
        assert worker.claim(limit=100) == []

        seen = []
        for attempt in open_:
            worker.complete(attempt, "done")
            await h.idle()
            await h.restart()  # a restart between every release: the line keeps its order
            seen += inputs(worker.claim(limit=100))
        assert seen == [3, 4, 5]
        await h.restart()
        assert worker.claim(limit=100) == []  # 6 still waits: three are open


async def test_new_calls_queue_behind_waiting_ones_not_ahead(harness: Factory) -> None:
    async with harness(call_app()) as h:
        send(h, LIMIT + 1)
        await h.idle()
        worker = Worker(h)
        first = worker.claim(limit=100)
        worker.complete(first[0], "done")
        send(h, 1, first=LIMIT + 1)  # arrives in the same batch as the result
        await h.idle()
        assert inputs(worker.claim(limit=100)) == [LIMIT]


async def test_the_bound_is_per_queue(harness: Factory) -> None:
    async with harness(call_app()) as h:
        send(h, LIMIT + 1)
        send(h, 2, first=100, trigger="other")
        await h.idle()
        worker = Worker(h)
        assert len(worker.claim(limit=100)) == LIMIT
        assert inputs(worker.claim(("other",), limit=100)) == [100, 101]


async def test_a_deadline_counts_from_publication_and_ends_an_open_attempt(
    harness: Factory,
) -> None:
    app = call_app(timeout=timedelta(seconds=30), retry=ov.Retry(max_attempts=1))
    async with harness(app) as h:
        send(h, LIMIT)
        await h.idle()
        await h.advance(20)
        send(h, 1, first=LIMIT)
        await h.idle()
        await h.advance(15)  # the first three time out: the fourth is published now
        worker = Worker(h)
        claimed = worker.claim(limit=100)
        assert inputs(claimed) == [LIMIT]
        # from now, not from the call: in the engine's clock (when it gives up) and in
        # the request (wall time, for workers)
        (row,) = [w for w in h.backend.store.work() if w.kind == "task"]
        assert row.due == h.clock.now() + 30
        assert wall_deadline(claimed[0].request.deadline, 30)
        assert sorted(i.status for i in h.client.instances()) == ["failed"] * LIMIT + ["running"]


async def test_a_cancelled_waiting_call_gives_its_place_up(harness: Factory) -> None:
    async with harness(call_app()) as h:
        send(h, LIMIT + 2)
        await h.idle()
        (waiting,) = [i for i in h.client.instances() if i.key == f"k{LIMIT}"]
        h.client.cancel(waiting.id)
        await h.idle()
        worker = Worker(h)
        first = worker.claim(limit=100)
        worker.complete(first[0], "done")
        await h.idle()
        assert inputs(worker.claim(limit=100)) == [LIMIT + 1]


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_a_bound_below_one_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_open_tasks_per_queue"):
        EngineOptions(max_open_tasks_per_queue=value)


async def test_the_open_attempts_gauge_follows_the_queue_and_a_restart(
    harness: Factory,
) -> None:
    from overture.observe.metrics import MetricsObserver

    metrics = MetricsObserver()

    def gauge(queue: str) -> float:
        value = metrics.registry.get_sample_value("overture_task_attempts_open", {"queue": queue})
        return -1.0 if value is None else value

    async with harness(call_app(), observer=metrics) as h:
        send(h, LIMIT + 2)
        send(h, 1, first=100, trigger="other")
        await h.idle()
        assert (gauge("default"), gauge("other")) == (LIMIT, 1)
        worker = Worker(h)
        first = worker.claim(limit=100)
        worker.complete(next(a for a in first if a.request.input == {"n": 0}), "done")
        await h.idle()
        assert gauge("default") == LIMIT  # one ended, the oldest waiting one opened
        (other,) = worker.claim(limit=100, queues=("other",))
        worker.complete(other, "done")
        await h.idle()
        assert gauge("other") == 0  # ended, and nothing waits on that queue
        metrics_after = MetricsObserver()
        metrics = metrics_after
    async with harness(call_app(), observer=metrics_after) as h:
        await h.idle()
        # a new engine counts the open attempts again from the stored rows
        assert gauge("default") == LIMIT
