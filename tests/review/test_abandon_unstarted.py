"""Review of round 1: an operation abandoned in the same stretch of code that started it
(before the instance next waited) never starts: a step's function does not run, a
call's attempt is not published. Before the fix the step ran all the same (its
``ScheduleStep`` was carried out before the ``Abandon`` that followed it), an effect
for an operation the code had already given up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import overture as ov
from overture.testing import Harness


@pytest.mark.parametrize("cache_size", [10_000, 0], ids=["cached", "replay"])
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_step_abandoned_before_it_started_never_runs(cache_size: int, sync: bool) -> None:
    app = ov.App("unstarted")
    ran: list[str] = []

    async def effect_async() -> str:
        ran.append("effect")
        return "done"

    def effect_sync() -> str:
        ran.append("effect")
        return "done"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        step = ctx.step(effect_sync if sync else effect_async, name="effect")
        ctx.abandon(step)
        call = ctx.call("t.never")
        ctx.abandon(call)
        await ctx.sleep(timedelta(seconds=1))
        try:
            await step
        except ov.OperationAbandoned:
            return "abandoned"
        return "awaited"

    async with Harness(app, cache_size=cache_size) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(1)
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "abandoned")
        assert ran == []
        assert h.backend.tasks.claim(["default"], "w", 10, 30.0) == []
