"""/healthz, /readyz (the engine's readiness in ``run --http``, the backend's in
``serve``), /openapi.json and /docs."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from overture.backends import open_backend
from overture.cli.common import CliError
from overture.cli.serve import serve
from overture.runtime.host import Host
from overture.runtime.options import EngineOptions

from .conftest import Served, serving
from .shop import app


async def test_healthz_and_readyz_with_a_running_engine(served: Served) -> None:
    assert (await served.http.get("/healthz")).json() == {"status": "ok"}
    reply = await served.http.get("/readyz")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"status": "ready"}


async def test_readyz_is_503_once_the_engine_stops(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path / 'api.db'}") as served:
        assert served.host is not None
        await served.host.stop(grace=0.5)
        reply = await served.http.get("/readyz")
        assert reply.status_code == 503
        assert reply.json()["error"] == "not ready: the engine is stopping"
        assert (await served.http.get("/healthz")).status_code == 200


async def test_host_unready_until_it_owns_its_partitions(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        host = Host(app, backend)
        assert host.unready == "the engine has not claimed its partitions yet"
        await host.start()
        runner = asyncio.create_task(host.run())
        await asyncio.sleep(0)
        assert host.unready is None
        await host.stop(grace=0.5)
        await runner
        assert host.unready == "the engine is stopping"
    finally:
        backend.close()


async def test_serve_readiness_is_the_backend_answering(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path / 'api.db'}", engine=False) as served:
        reply = await served.http.get("/readyz")
        assert reply.status_code == 200, reply.text
        served.backend.close()  # the backend cannot answer any more
        reply = await served.http.get("/readyz")
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"].startswith("not ready: the backend failed")


async def test_openapi_documents_every_route_and_docs_page_loads(served: Served) -> None:
    spec = (await served.http.get("/openapi.json")).json()
    assert set(spec["paths"]) == {
        "/metrics",
        "/events",
        "/instances",
        "/instances/{instance_id}",
        "/instances/{instance_id}/cancel",
        "/instances/{instance_id}/result",
        "/dead-letters",
        "/dead-letters/{letter_id}",
        "/dead-letters/{letter_id}/replay",
        "/dead-letters/replay",
        "/dead-letters/delete",
        "/healthz",
        "/readyz",
        "/tasks/claim",
        "/tasks/{task_id}/heartbeat",
        "/tasks/{task_id}/complete",
        "/tasks/{task_id}/fail",
    }
    assert {"200", "202", "404"} <= set(
        spec["paths"]["/dead-letters/{letter_id}"]["delete"]["responses"]
    )
    bulk = spec["paths"]["/dead-letters/delete"]["post"]
    schema = bulk["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"ids", "all", "reason"}
    claim = spec["paths"]["/tasks/claim"]["post"]
    schema = claim["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"worker", "queues", "max", "lease", "wait"}
    assert {"200", "400", "422"} <= set(claim["responses"])
    complete = spec["paths"]["/tasks/{task_id}/complete"]["post"]
    assert {"200", "404", "409", "422"} <= set(complete["responses"])
    events = spec["paths"]["/events"]["post"]
    assert set(events["requestBody"]["content"]) == {
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
    }
    assert {"202", "400", "403", "413", "415", "422"} <= set(events["responses"])
    assert [p["name"] for p in events["parameters"]] == ["start", "process"]
    docs = await served.http.get("/docs")
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


async def test_the_docs_pages_load_nothing_from_outside(served: Served) -> None:
    """/docs and /redoc work without internet: every script, style sheet and icon they
    name is served by the API itself."""
    for page in ("/docs", "/redoc"):
        html = (await served.http.get(page)).text
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        assets += re.findall(r"""url:\s*["']([^"']+)["']""", html)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from outside"
            answer = await served.http.get(asset)
            assert answer.status_code == 200, asset
    bundle = await served.http.get(
        re.findall(r'src="([^"]+bundle[^"]*)"', (await served.http.get("/docs")).text)[0]
    )
    assert len(bundle.content) > 100_000  # the real Swagger UI, not a placeholder


async def test_run_fails_and_drains_when_its_api_cannot_serve(tmp_path: Path) -> None:
    """`overture run --http` does not run on without the API it was asked for."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no stream: cannot be served
    sock.bind(("127.0.0.1", 0))
    url = f"sqlite:///{tmp_path / 'run.db'}"
    with pytest.raises(CliError, match=r"the HTTP API stopped \(ValueError"):
        await serve(app, url, options=EngineOptions(), partitions=None, grace=0.5, http=sock)
    backend = open_backend(url)  # drained and closed: the engine lock is free again
    try:
        host = Host(app, backend)
        await host.start()
        await host.stop(grace=0.5)
    finally:
        backend.close()
