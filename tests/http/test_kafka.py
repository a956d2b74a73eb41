"""The API on Kafka, in the engine's process as ``overture run --http`` serves it:
not ready until the group has assigned the engine its partitions, then an event posted
starts an instance whose result the long poll returns (woken by the changelog)."""

from __future__ import annotations

import asyncio

import httpx

from overture.backends import open_backend
from overture.http import ApiServer, bind, create_api
from overture.runtime.host import Host

from ..conftest import kafka_url
from .conftest import started
from .shop import app


async def test_run_http_on_kafka_ready_once_partitions_are_owned(kafka_bootstrap: str) -> None:
    backend = open_backend(kafka_url(kafka_bootstrap))
    host = Host(app, backend)

    async def ready() -> str | None:
        return host.unready

    server = ApiServer(create_api(app, backend, ready=ready), bind("127.0.0.1", 0))
    serving = asyncio.create_task(server.serve())
    runner: asyncio.Task[None] | None = None
    try:
        await started(server)
        async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=60) as http:
            early = await http.get("/readyz")
            assert early.status_code == 503
            assert "not claimed" in early.json()["error"]
            await host.start()
            runner = asyncio.create_task(host.run())
            for _ in range(1200):
                reply = await http.get("/readyz")
                if reply.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"never ready: {reply.text}")
            assert host.engines  # ready means it owns its partitions
            posted = await http.post(
                "/events?start=true",
                headers={
                    "ce-id": "k-1",
                    "ce-source": "/kafka",
                    "ce-type": "order.placed",
                    "ce-specversion": "1.0",
                },
                json={"order_id": "k", "quantity": 3},
            )
            assert posted.status_code == 202, posted.text
            [instance_id] = posted.json()["instances"]
            result = await http.get(f"/instances/{instance_id}/result", params={"wait": 45})
            assert result.status_code == 200, result.text
            assert result.json()["result"] == {"order": "k", "shipped": 3}
            await host.stop(grace=1.0)
            assert (await http.get("/readyz")).status_code == 503
    finally:
        server.stop()
        await serving
        if runner is not None:
            await host.stop(grace=1.0)
            await runner
        backend.close()
