"""Review of round 1: a task whose output is larger than the broker takes (Kafka's
``message.max.bytes``, 1 MB by default) is never answered: ``finish`` raises
``BrokerUnavailable``, the worker leaves the attempt to its lease, and the next worker
ran it again, and again, without end (a call without a deadline waited for ever). Now
the worker answers with a non-retryable ``ResultRefused`` failure saying so."""

from __future__ import annotations

import asyncio
from typing import Any

import overture as ov
from overture.runtime.clock import SystemClock
from overture.testing import Harness
from overture.worker import Worker

from ..conftest import kafka_url


async def test_an_output_too_large_for_the_broker_fails_the_call(kafka_bootstrap: str) -> None:
    app = ov.App("large")

    @app.task("t.large")
    def large(value: Any) -> str:
        return "x" * 2_000_000

    @app.process(trigger="go")
    async def go(ctx: ov.Context, event: ov.Event) -> Any:
        try:
            return await ctx.call("t.large")
        except ov.TaskFailed as error:
            return {"failed": error.error_type}

    async with Harness(app, kafka_url(kafka_bootstrap, 1), clock=SystemClock()) as h:
        h.client.send("go", {}, key="k")
        async with Worker(app, h.backend, lease=1.0, poll=0.1):
            for _ in range(100):  # 10 s: the first claim joins the queue's group (~3 s)
                await asyncio.sleep(0.1)
                await h.idle()
                instances = h.client.instances()
                if instances and instances[0].status != "running":
                    break
        (instance,) = h.client.instances()
        assert instance.status == "completed"
        assert instance.result == {"failed": "ResultRefused"}
