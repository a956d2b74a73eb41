"""An async step runs in one asyncio task from its first line to its last, and that task
is ``asyncio.current_task()`` throughout, although the engine starts the step's coroutine
itself (so a step that never suspends finishes within the batch). Libraries that remember
their task when entered and check it when left (anyio's cancel scopes, hence httpx;
``asyncio.timeout``) depend on that."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

import httpx

import overture as ov
from overture.testing import Harness


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_step_using_httpx_and_asyncio_timeout_across_suspensions() -> None:
    port = _refused_port()
    app = ov.App("tasks")
    seen: list[bool] = []

    async def fetch() -> str:
        first = asyncio.current_task()
        async with asyncio.timeout(5):  # entered before the first suspension
            await asyncio.sleep(0)
            seen.append(asyncio.current_task() is first)
        async with httpx.AsyncClient(trust_env=False) as client:  # an anyio cancel scope
            try:
                await client.get(f"http://127.0.0.1:{port}/")
            except httpx.ConnectError:
                return "refused"
        return "answered?"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        first = await ctx.step(fetch, retry=ov.Retry(max_attempts=1))
        second = await ctx.step(fetch, retry=ov.Retry(max_attempts=1), timeout=timedelta(seconds=5))
        return [first, second]

    async with Harness(app, "memory://async-step-tasks", clock=ov.SystemClock()) as h:
        h.client.send("go", {}, key="k")
        for _ in range(200):
            await h.idle()
            (instance,) = h.client.instances()
            if instance.status in ("completed", "failed"):
                break
            await asyncio.sleep(0.02)
        assert (instance.status, instance.result, instance.error) == (
            "completed",
            ["refused", "refused"],
            None,
        )
        assert seen == [True, True]
