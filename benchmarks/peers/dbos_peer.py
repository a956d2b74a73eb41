"""DBOS Transact (Python) on PostgreSQL 15 from Debian.

DBOS is a library: workflows run inside the calling process, which writes their state to
the Postgres system database. The cluster is made with ``initdb`` in the temp dir (owned by
the ``postgres`` system user) and served on 127.0.0.1:5433 by a ``postgres`` process we
start and stop by its pid.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from . import _common

PORT = 5433
TUNING = (
    "async workflows and async steps on the caller's event loop (DBOS.start_workflow_async; "
    "no per-workflow thread), DBOS defaults for the system-database pool and executor "
    "threads, LISTEN/NOTIFY on; Postgres 15 defaults except listen_addresses/port; "
    "clients start all N workflows concurrently (asyncio.gather)"
)
DURABILITY = "PostgreSQL defaults: fsync=on, synchronous_commit=on, wal_sync_method=fdatasync"

# in-process side channel: the W2 workflow adds its order id just before it calls recv,
# so the benchmark knows when every instance waits (not part of DBOS's durable state)
WAITING: set[str] = set()
_REGISTERED: dict[str, Any] = {}


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/postgres: run benchmarks/peers/setup.sh")
    return Path(found[-1]).parent


def start_postgres(workdir: Path) -> _common.Server:
    if not _common.port_free(PORT):
        raise RuntimeError(f"port {PORT} on 127.0.0.1 is in use")
    bindir = _pg_bin()
    # the postgres user must reach its data dir: open the search bit on our own temp dirs
    for d in (workdir, workdir.parent):
        if d.name.startswith(("overture-peers-", "dbos-r", "peerbench")):
            os.chmod(d, 0o711)
    data = workdir / "pgdata"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    os.chmod(data, 0o700)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=False,
        user="postgres",
        group="postgres",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    if init.returncode:
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-800:]}")
    server = _common.Server(
        "postgres",
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(PORT),
            "-c",
            f"listen_addresses={_common.HOST}",
            "-c",
            f"unix_socket_directories={data}",
        ],
        workdir / "postgres.log",
        user="postgres",
        cwd="/",
        stop_signal=signal.SIGINT,  # "fast" shutdown
    )
    _common.wait_port(PORT, 60, server)
    time.sleep(0.5)
    return server


def _define() -> dict[str, Any]:
    """Register the workflows once (DBOS decorators register globally)."""
    if _REGISTERED:
        return _REGISTERED
    from dbos import DBOS

    @DBOS.step()
    async def check_inventory(item: str, quantity: int) -> bool:
        return quantity < 100

    @DBOS.step()
    async def charge(order_id: str, quantity: int) -> str:
        return f"rcpt-{order_id}"

    @DBOS.step()
    async def ship(order_id: str) -> str:
        return f"trk-{order_id}"

    @DBOS.workflow(name="fulfil")
    async def fulfil(order_id: str) -> dict[str, str]:
        in_stock = await check_inventory("book", 1)
        if not in_stock:
            return {"outcome": "out_of_stock"}
        receipt = await charge(order_id, 1)
        tracking = await ship(order_id)
        return {"outcome": "shipped", "receipt": receipt, "tracking": tracking}

    @DBOS.workflow(name="await_payment")
    async def await_payment(order_id: str) -> int:
        WAITING.add(order_id)
        amount = await DBOS.recv_async("payment", timeout_seconds=3600)
        return int(amount)

    _REGISTERED.update(fulfil=fulfil, await_payment=await_payment)
    return _REGISTERED


async def _start(func: Any, key: str) -> Any:
    from dbos import DBOS, SetWorkflowID

    with SetWorkflowID(key):
        return await DBOS.start_workflow_async(func, key)


async def _bench(n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    from dbos import DBOS

    wf = _define()
    run = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {}

    handles = await asyncio.gather(
        *(_start(wf["fulfil"], f"warm-{run}-{i}") for i in range(warmup))
    )
    await asyncio.gather(*(h.get_result() for h in handles))

    _common.log(f"dbos W1 load n={n}")
    cpu0 = os.times()
    t0 = time.time()
    handles = await asyncio.gather(*(_start(wf["fulfil"], f"w1-{run}-{i}") for i in range(n)))
    sent = time.time()
    results = await asyncio.gather(*(h.get_result() for h in handles))
    t1 = time.time()
    cpu1 = os.times()
    assert all(r["outcome"] == "shipped" for r in results)
    out["w1"] = {
        "n": n,
        "throughput": n / (t1 - t0),
        "producer_rate": n / (sent - t0),
        "client_cpu_ms_per_instance": 1000
        * (cpu1.user + cpu1.system - cpu0.user - cpu0.system)
        / n,
    }

    _common.log(f"dbos W1 1x1 iterations={iterations}")
    lat = []
    for i in range(iterations):
        s = time.time()
        h = await _start(wf["fulfil"], f"w1s-{run}-{i}")
        await h.get_result()
        lat.append(time.time() - s)
    out["w1"].update(_common.latency_summary(lat, "serial"), iterations=iterations)

    _common.log(f"dbos W2 load n={w2_n}")
    out["w2"] = await _w2(DBOS, wf, f"w2-{run}", w2_n, serial=False)
    _common.log(f"dbos W2 1x1 iterations={iterations}")
    out["w2"].update(await _w2(DBOS, wf, f"w2s-{run}", iterations, serial=True))
    return out


async def _w2(dbos: Any, wf: Any, prefix: str, n: int, serial: bool) -> dict:
    keys = [f"{prefix}-{i}" for i in range(n)]
    ts = time.time()
    handles = await asyncio.gather(*(_start(wf["await_payment"], k) for k in keys))
    deadline = time.monotonic() + 600
    while not WAITING.issuperset(keys):
        if time.monotonic() > deadline:
            raise TimeoutError("W2 instances did not all reach recv")
        await asyncio.sleep(0.05)
    start_rate = n / (time.time() - ts)
    await asyncio.sleep(0.2)  # let the last recv calls register their notification
    if serial:
        lat = []
        for k, h in zip(keys, handles, strict=True):
            s = time.time()
            await dbos.send_async(k, 42, "payment")
            await h.get_result()
            lat.append(time.time() - s)
        return {**_common.latency_summary(lat, "serial"), "iterations": n}
    t0 = time.time()
    await asyncio.gather(*(dbos.send_async(k, 42, "payment") for k in keys))
    sent = time.time()
    results = await asyncio.gather(*(h.get_result() for h in handles))
    t1 = time.time()
    assert all(r == 42 for r in results)
    return {
        "n": n,
        "throughput": n / (t1 - t0),
        "producer_rate": n / (sent - t0),
        "start_rate": start_rate,
    }


def _versions(pg_bin: Path) -> dict[str, str]:
    from importlib.metadata import version

    pg = subprocess.run(
        [str(pg_bin / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {"dbos": version("dbos"), "postgres": pg}


def run(workdir: Path, *, n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    pg = start_postgres(workdir)
    try:
        from dbos import DBOS

        _define()
        config: Any = {
            "name": "overture-bench",
            "system_database_url": f"postgresql://postgres@{_common.HOST}:{PORT}/dbos_bench",
            "log_level": "WARNING",
        }
        dbos = DBOS(config=config)

        async def main() -> dict:
            DBOS.launch()
            try:
                return await _bench(n, w2_n, iterations, warmup)
            finally:
                DBOS.destroy(destroy_registry=False)

        results = asyncio.run(main())
        del dbos
    finally:
        pg.stop()
    return {"versions": _versions(_pg_bin()), "tuning": TUNING, "durability": DURABILITY, **results}
