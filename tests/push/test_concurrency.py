"""Many push attempts in flight at once on one connection pool, the event loop free."""

from __future__ import annotations

import asyncio
import time

import overture as ov
from overture import protocol
from overture.codec import Codec
from overture.push import PushExecutor, PushOptions

from .conftest import PushServer, claimed, result_of

SLOW = 0.5
"""Seconds the endpoint holds each request."""


def _executor(server: PushServer, options: PushOptions | None = None) -> PushExecutor:
    app = ov.App("shop")
    app.task("slow", url=server.url(f"slow/{SLOW}"), secret_env="PUSH_SECRET")
    return PushExecutor(
        app.tasks, Codec(app), options=options, environ={"PUSH_SECRET": server.secret}
    )


async def test_many_attempts_are_in_flight_at_once_and_the_loop_stays_responsive(
    push_server: PushServer,
) -> None:
    n = 40
    requests = [claimed("slow", i, seq=i) for i in range(n)]
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with _executor(push_server) as executor:
        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        records = await asyncio.gather(*(executor.run(r) for r in requests))
        elapsed = time.monotonic() - started
        done.set()
        await tick

    results = [result_of(rec, req)[1] for rec, req in zip(records, requests, strict=True)]
    assert all(isinstance(m, protocol.TaskCompletion) for m in results)
    assert push_server.peak == n, "every attempt was held by the endpoint at the same time"
    assert elapsed < SLOW * n / 4, f"{n} attempts of {SLOW} s took {elapsed:.2f} s"
    # the loop ran the ticker all along: nothing blocked it while the requests were out
    assert len(gaps) > 20
    assert max(gaps) < 0.5, f"the event loop was blocked for {max(gaps):.3f} s"


async def test_the_pool_bounds_the_connections_in_flight(push_server: PushServer) -> None:
    requests = [claimed("slow", i, seq=i) for i in range(12)]
    options = PushOptions(max_connections=3, max_keepalive=3)
    async with _executor(push_server, options) as executor:
        records = await asyncio.gather(*(executor.run(r) for r in requests))
    assert all(
        isinstance(result_of(rec, req)[1], protocol.TaskCompletion)
        for rec, req in zip(records, requests, strict=True)
    )
    assert push_server.peak == 3
    assert len(push_server.received) == 12
