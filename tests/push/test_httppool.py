"""ShardedTransport: the push executor's connections spread over small pools, the
client's limits kept, every request accounted for until its response is closed."""

from __future__ import annotations

import asyncio
import time

import pytest

import overture as ov
from overture import protocol
from overture.codec import Codec
from overture.httppool import SHARD_SIZE, ShardedTransport
from overture.push import PushExecutor, PushOptions

from .conftest import PushServer, claimed, free_port, result_of


@pytest.mark.parametrize(
    ("connections", "shards"), [(1, 1), (SHARD_SIZE, 1), (SHARD_SIZE + 1, 2), (100, 25)]
)
async def test_the_connections_are_split_into_shards(connections: int, shards: int) -> None:
    transport = ShardedTransport(max_connections=connections, max_keepalive=connections)
    assert transport.shards == shards
    await transport.aclose()


async def test_the_total_limit_holds_across_shards_and_every_shard_is_used(
    push_server: PushServer,
) -> None:
    app = ov.App("shop")
    app.task("slow", url=push_server.url("slow/0.4"), secret_env="S")
    options = PushOptions(max_connections=10, max_keepalive=10)  # shards of 4, 3, 3
    async with PushExecutor(
        app.tasks, Codec(app), options=options, environ={"S": push_server.secret}
    ) as executor:
        requests = [claimed("slow", i, seq=i) for i in range(30)]
        records = await asyncio.gather(*(executor.run(r) for r in requests))
    assert all(
        isinstance(result_of(rec, req)[1], protocol.TaskCompletion)
        for rec, req in zip(records, requests, strict=True)
    )
    # the limit holds; more at once than one shard's 4 means the other shards served
    # too (exactly 10 at once is typical, but a loaded machine may start some late)
    assert 4 < push_server.peak <= 10


async def test_every_request_is_released_whatever_became_of_it(push_server: PushServer) -> None:
    app = ov.App("shop")
    app.task("ok", url=push_server.url("echo"), secret_env="S")
    app.task("gone", url=push_server.url("status/503"), secret_env="S")
    app.task("slow", url=push_server.url("slow/5"), secret_env="S")
    app.task("refused", url=f"http://127.0.0.1:{free_port()}/x", secret_env="S")
    async with PushExecutor(app.tasks, Codec(app), environ={"S": push_server.secret}) as executor:
        transport = executor._transport
        deadline = time.time() + 1.0
        requests = [
            claimed(task, seq=i, deadline=deadline)
            for i, task in enumerate(["ok", "gone", "slow", "refused"] * 5)
        ]
        records = await asyncio.gather(*(executor.run(r) for r in requests))
        kinds = {result_of(rec, req)[0].type for rec, req in zip(records, requests, strict=True)}
        assert kinds == {protocol.TASK_COMPLETED, protocol.TASK_FAILED}
        assert transport.in_flight() == 0


async def test_a_request_cancelled_while_waiting_for_a_connection_is_released(
    push_server: PushServer,
) -> None:
    app = ov.App("shop")
    app.task("slow", url=push_server.url("slow/0.5"), secret_env="S")
    options = PushOptions(max_connections=1, max_keepalive=1)
    async with PushExecutor(
        app.tasks, Codec(app), options=options, environ={"S": push_server.secret}
    ) as executor:
        transport = executor._transport
        first = asyncio.create_task(executor.run(claimed("slow", seq=1)))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(executor.run(claimed("slow", seq=2)))
        await asyncio.sleep(0.1)
        assert transport.in_flight() == 2, "the second waits for the only connection"
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert transport.in_flight() == 1
        await first
        assert transport.in_flight() == 0
    assert [r.body.count(b'"seq":1,') for r in push_server.received] == [1]
