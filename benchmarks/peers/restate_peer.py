"""Restate: ``restate-server`` (npm ``@restatedev/restate-server``) + the Python SDK
(``restate-sdk``) served by hypercorn over h2c, registered through the admin API.

Three processes: restate-server (ingress 8080, admin 9070, node 5122), the hypercorn
service deployment (9080) and this client, which talks HTTP/1.1 to the ingress.
"""

from __future__ import annotations

import asyncio
import glob
import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from . import _common

INGRESS, ADMIN, NODE, SERVICE = 8080, 9070, 5122, 9080
TUNING = (
    "single-node restate-server, default configuration (partitions, RocksDB, local "
    "Bifrost log); one hypercorn worker process (h2c, bidi streaming) for the Python "
    "services; client: httpx over HTTP/1.1, <=64 concurrent start requests and <=256 "
    "concurrent attach (wait-for-result) requests"
)
DURABILITY = "RocksDB + local loglet, server defaults (WAL fsync on)"
SEND_CONC, ATTACH_CONC = 64, 256


def _server_binary() -> Path:
    # the npm package's bin is a node shim that spawns the native binary: run the binary
    # itself, so the pid we stop is the server's
    pattern = str(
        _common.PEERS_DIR / "node_modules/@restatedev/restate-server-*/bin/restate-server"
    )
    found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError("restate-server not installed: run benchmarks/peers/setup.sh")
    return Path(found[0])


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def start(workdir: Path) -> tuple[_common.Server, _common.Server]:
    for port in (INGRESS, ADMIN, NODE, SERVICE):
        if not _common.port_free(port):
            raise RuntimeError(f"port {port} on 127.0.0.1 is in use")
    server = _common.Server(
        "restate-server",
        [
            str(_server_binary()),
            "--listen-mode",
            "tcp",
            "--bind-ip",
            _common.HOST,
            "--advertised-host",
            _common.HOST,
            "--base-dir",
            str(workdir / "restate"),
            "--node-name",
            "bench",
        ],
        workdir / "restate-server.log",
        env={"RESTATE_DISABLE_TELEMETRY": "true", "RUST_LOG": "warn"},
        cwd=str(workdir),
    )
    try:
        service = _common.Server(
            "hypercorn",
            [
                str(_common.PEER_VENV / "bin" / "hypercorn"),
                "benchmarks.peers._restate_service:app",
                "--bind",
                f"{_common.HOST}:{SERVICE}",
                "--workers",
                "1",
                "--graceful-timeout",
                "2",
            ],
            workdir / "hypercorn.log",
            cwd=str(_common.ROOT),
        )
        _common.wait_port(ADMIN, 90, server)
        _common.wait_port(INGRESS, 90, server)
        _common.wait_port(SERVICE, 60, service)
        _common.wait_until(_admin_healthy, 60, "restate admin /health")
        deadline = time.monotonic() + 60
        while True:
            try:
                _post(
                    f"http://{_common.HOST}:{ADMIN}/deployments",
                    {"uri": f"http://{_common.HOST}:{SERVICE}"},
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    return server, service


def _admin_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://{_common.HOST}:{ADMIN}/health", timeout=2) as r:
            return bool(r.status == 200)
    except Exception:
        return False


async def _bench(n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    import httpx

    base = f"http://{_common.HOST}:{INGRESS}"
    order = {"item": "book", "quantity": 1}
    run = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {}
    timeout = httpx.Timeout(600.0)
    senders = httpx.AsyncClient(
        base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=SEND_CONC)
    )
    waiters = httpx.AsyncClient(
        base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=ATTACH_CONC)
    )

    async def ok(resp: Any) -> Any:
        if resp.status_code >= 300:
            raise RuntimeError(f"{resp.request.url}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    async def start(wf: str, key: str) -> None:
        await ok(await senders.post(f"/{wf}/{key}/run/send", json=order))

    async def attach(wf: str, key: str) -> Any:
        return await ok(await waiters.get(f"/restate/workflow/{wf}/{key}/attach"))

    async def start_and_wait(wf: str, key: str) -> Any:
        await start(wf, key)
        return await attach(wf, key)

    async with senders, waiters:
        await asyncio.gather(*(start_and_wait("Fulfil", f"warm-{run}-{i}") for i in range(warmup)))

        _common.log(f"restate W1 load n={n}")
        keys = [f"w1-{run}-{i}" for i in range(n)]
        sent_at: list[float] = []

        async def one(key: str) -> Any:
            await start("Fulfil", key)
            sent_at.append(time.time())
            return await attach("Fulfil", key)

        t0 = time.time()
        results = await asyncio.gather(*(one(k) for k in keys))
        t1 = time.time()
        assert all(r["outcome"] == "shipped" for r in results)
        out["w1"] = {"n": n, "throughput": n / (t1 - t0), "producer_rate": n / (max(sent_at) - t0)}

        _common.log(f"restate W1 1x1 iterations={iterations}")
        lat = []
        for i in range(iterations):  # one blocking call: start the workflow, wait for its result
            s = time.time()
            await ok(await senders.post(f"/Fulfil/w1s-{run}-{i}/run", json=order))
            lat.append(time.time() - s)
        out["w1"].update(_common.latency_summary(lat, "serial"), iterations=iterations)

        async def w2(prefix: str, count: int, serial: bool) -> dict:
            keys = [f"{prefix}-{i}" for i in range(count)]
            base_waiting = _get(f"http://{_common.HOST}:{SERVICE}/_bench/waiting")["waiting"]
            ts = time.time()
            await asyncio.gather(*(start("AwaitPayment", k) for k in keys))
            _common.wait_until(
                lambda: (
                    _get(f"http://{_common.HOST}:{SERVICE}/_bench/waiting")["waiting"]
                    >= base_waiting + count
                ),
                600,
                "W2 instances to reach their promise",
                every=0.05,
            )
            start_rate = count / (time.time() - ts)
            await asyncio.sleep(0.2)

            async def pay(k: str) -> None:
                await ok(await senders.post(f"/AwaitPayment/{k}/pay", json=42))

            if serial:
                lat = []
                for k in keys:
                    s = time.time()
                    await pay(k)
                    assert await attach("AwaitPayment", k) == 42
                    lat.append(time.time() - s)
                return {**_common.latency_summary(lat, "serial"), "iterations": count}

            async def pay_and_wait(k: str) -> Any:
                await pay(k)
                return await attach("AwaitPayment", k)

            t0 = time.time()
            results = await asyncio.gather(*(pay_and_wait(k) for k in keys))
            t1 = time.time()
            assert all(r == 42 for r in results)
            return {"n": count, "throughput": count / (t1 - t0), "start_rate": start_rate}

        _common.log(f"restate W2 load n={w2_n}")
        out["w2"] = await w2(f"w2-{run}", w2_n, serial=False)
        _common.log(f"restate W2 1x1 iterations={iterations}")
        out["w2"].update(await w2(f"w2s-{run}", iterations, serial=True))
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    server = subprocess.run(
        [str(_server_binary()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "restate-sdk": version("restate-sdk"),
        "hypercorn": version("hypercorn"),
        "server": server,
    }


def run(workdir: Path, *, n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    server, service = start(workdir)
    try:
        cpu0 = _common.proc_cpu_seconds(server.pid)
        results = asyncio.run(_bench(n, w2_n, iterations, warmup))
        results["cpu_s"] = {
            "restate-server": _common.proc_cpu_seconds(server.pid) - cpu0,
        }
    finally:
        service.stop()
        server.stop()
    return {"versions": _versions(), "tuning": TUNING, "durability": DURABILITY, **results}
