"""Review of round 1: an attempt's deadline under an engine that runs a virtual clock.

Workers and the task queues compare a request's ``deadline`` with wall time
(``time.time()``), while the engine computes it from its own clock. With a
``VirtualClock`` behind the wall clock every attempt with a timeout looks expired to
them: SQLite never handed it out and the Python worker skipped it, so the call could
only time out. (The default ``VirtualClock()`` starts at 1.8e9, 2027-01-15: until that
day the two happened to agree.) Requests now carry wall time; the engine keeps its own
deadline in its clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.testing import Harness, VirtualClock
from overture.worker import Worker

BEHIND = 1_000_000_000.0
"""A virtual start well behind the wall clock (2001)."""


def timed_app() -> ov.App:
    app = ov.App("timed")

    @app.task("t.quick", timeout=timedelta(seconds=30))
    def quick(value: Any) -> Any:
        return {"done": value}

    @app.process(trigger="go")
    async def go(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.call("t.quick", event.data)

    return app


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_timed_call_completes_under_a_virtual_clock_behind_wall_time(
    kind: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}" if kind == "sqlite" else None
    app = timed_app()
    async with Harness(app, url, clock=VirtualClock(BEHIND)) as h:
        h.client.send("go", {"n": 1}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        async with Worker(app, h.backend, poll=0.05):
            for _ in range(100):  # 5 s: a local task answers in milliseconds
                await asyncio.sleep(0.05)
                await h.idle()
                done = h.client.instance(instance.id)
                if done.status != "running":
                    break
        assert (done.status, done.result) == ("completed", {"done": {"n": 1}})


async def test_the_engine_still_gives_up_at_its_own_virtual_deadline() -> None:
    app = timed_app()
    async with Harness(app, clock=VirtualClock(BEHIND)) as h:
        h.client.send("go", {"n": 1}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert len(h.backend.tasks.claim(["default"], "w", 1, 30.0)) == 1
        await h.advance(29.9)
        assert [e for e in h.client.journal(instance.id) if e["k"] == "retry"] == []
        await h.advance(0.1)  # no result by the deadline, in the engine's time
        (retry,) = [e for e in h.client.journal(instance.id) if e["k"] == "retry"]
        assert retry["err"]["type"] == "TaskTimeout"
