"""Many push attempts in flight at once on one connection pool, the event loop free."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

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
    options = PushOptions(max_connections=3)
    async with _executor(push_server, options) as executor:
        records = await asyncio.gather(*(executor.run(r) for r in requests))
    assert all(
        isinstance(result_of(rec, req)[1], protocol.TaskCompletion)
        for rec, req in zip(records, requests, strict=True)
    )
    assert push_server.peak == 3
    assert len(push_server.received) == 12


async def test_an_attempt_cancelled_while_waiting_for_a_connection_holds_nothing(
    push_server: PushServer,
) -> None:
    options = PushOptions(max_connections=1)
    async with _executor(push_server, options) as executor:
        first = asyncio.create_task(executor.run(claimed("slow", seq=1)))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(executor.run(claimed("slow", seq=2)))
        await asyncio.sleep(0.1)
        assert not second.done(), "the second waits for the only connection"
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        first_record = await first
        # the cancelled attempt gave up its place: the next one gets the connection
        third = claimed("slow", seq=3)
        third_record = await asyncio.wait_for(executor.run(third), 5)
    assert isinstance(result_of(third_record, third)[1], protocol.TaskCompletion)
    assert first_record.event_type == protocol.TASK_COMPLETED
    sent = [orjson.loads(r.body)["data"]["seq"] for r in push_server.received]
    assert sent == [1, 3], "the cancelled attempt was never sent"


async def test_an_attempt_cancelled_in_flight_frees_its_connection(
    push_server: PushServer,
) -> None:
    app = ov.App("shop")
    app.task("stuck", url=push_server.url("slow/30"), secret_env="S")
    app.task("echo", url=push_server.url("echo"), secret_env="S")
    options = PushOptions(max_connections=1)
    async with PushExecutor(
        app.tasks, Codec(app), options=options, environ={"S": push_server.secret}
    ) as executor:
        stuck = asyncio.create_task(executor.run(claimed("stuck", seq=1)))
        await asyncio.sleep(0.3)
        assert push_server.current == 1, "the endpoint holds the request"
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        request = claimed("echo", "after", seq=2)
        started = time.monotonic()
        record = await asyncio.wait_for(executor.run(request), 5)
        assert time.monotonic() - started < 2, "the only connection was given back at once"
    _, message = result_of(record, request)
    assert isinstance(message, protocol.TaskCompletion)
    assert message.output == {"echo": "after", "attempt": 1}


async def test_a_closed_executor_pushes_nothing_more(push_server: PushServer) -> None:
    executor = _executor(push_server)
    await executor.run(claimed("slow", seq=1))
    await executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        await executor.run(claimed("slow", seq=2))
    await executor.close()  # a second close does nothing
    assert len(push_server.received) == 1
