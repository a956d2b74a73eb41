"""Fixtures of the HTTP API tests: a real uvicorn server on 127.0.0.1 (a free port),
the API in front of a real engine on a real backend, driven with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from overture import App
from overture.backends import open_backend
from overture.http import ApiServer, bind, create_api
from overture.ports import Backend
from overture.runtime.host import Host

from .shop import app


@dataclass
class Served:
    """A running API: its base URL, an httpx client on it, and the backend behind it."""

    url: str
    http: httpx.AsyncClient
    backend: Backend
    host: Host | None
    api: FastAPI
    server: ApiServer

    def appends(self) -> int:
        """How many appends the API's client has made (each one commit)."""
        return int(self.api.state.overture.client.sync._sends.appends)

    def log_size(self) -> int:
        """Records in the log, every partition (to assert a request wrote nothing)."""
        log = self.backend.log
        return sum(log.end_offset(p) for p in range(log.partitions))


async def started(server: ApiServer) -> None:
    """Wait until ``server`` accepts connections."""
    for _ in range(1000):
        if server.started:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the API server did not start")


@asynccontextmanager
async def serving(
    url: str, *, engine: bool = True, max_body: int | None = None, app: App = app
) -> AsyncIterator[Served]:
    """The API of ``app`` (the test shop by default) on ``url`` (with an engine running
    next to it, in the same loop, as ``overture run --http`` does)."""
    backend = open_backend(url)
    host = None
    runner = None
    try:
        if engine:
            host = Host(app, backend)
            await host.start()
            runner = asyncio.create_task(host.run())
        ready = None
        if host is not None:
            running = host

            async def ready() -> str | None:
                return running.unready

        kwargs = {} if max_body is None else {"max_body": max_body}
        api = create_api(app, backend, ready=ready, **kwargs)
        server = ApiServer(api, bind("127.0.0.1", 0))
        serve = asyncio.create_task(server.serve())
        await started(server)
        base = f"http://{server.address}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            try:
                yield Served(base, http, backend, host, api, server)
            finally:
                server.stop()
                await serve
    finally:
        if host is not None:
            await host.stop(grace=1.0)
            assert runner is not None
            await runner
        backend.close()


@pytest.fixture(params=["sqlite", "memory"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    url = f"sqlite:///{tmp_path / 'api.db'}" if request.param == "sqlite" else "memory://api"
    async with serving(url) as running:
        yield running


@pytest.fixture
async def served_sqlite(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(f"sqlite:///{tmp_path / 'api.db'}") as running:
        yield running


__all__ = ["Served", "serving", "started"]
