"""Celery 5 on Redis (Debian redis-server): the plain task-queue baseline, W1 only.

W1 is a ``chain`` of three tasks (each step's result is the next step's first argument);
completion is the last task's result in the Redis result backend. A Celery chain is not a
durable process: nothing records which step a chain had reached beyond the queued message.
The worker runs in its own process (prefork pool), started and stopped by its pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chain

from . import _common

PORT = 6379
URL = os.environ.get("OVERTURE_BENCH_REDIS", f"redis://{_common.HOST}:{PORT}/0")
CONCURRENCY = 2
TUNING = (
    f"worker: prefork pool, concurrency {CONCURRENCY} (= cores), acks_late, prefetch "
    "multiplier 4 (default), json serializer; result backend Redis; the client applies all "
    "N chains then waits on their results in order"
)
DURABILITY = "Redis AOF, appendfsync everysec (up to ~1 s of acknowledged writes can be lost)"

app = Celery("overture_bench", broker=URL, backend=URL)
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="overture-bench",
    result_expires=3600,
)


@app.task(name="bench.check_inventory")
def check_inventory(item: str, quantity: int) -> bool:
    return quantity < 100


@app.task(name="bench.charge")
def charge(in_stock: bool, order_id: str, quantity: int) -> dict[str, str]:
    if not in_stock:
        return {"outcome": "out_of_stock"}
    return {"outcome": "charged", "receipt": f"rcpt-{order_id}"}


@app.task(name="bench.ship")
def ship(state: dict[str, str], order_id: str) -> dict[str, str]:
    if state["outcome"] != "charged":
        return state
    return {"outcome": "shipped", "receipt": state["receipt"], "tracking": f"trk-{order_id}"}


def fulfil(order_id: str) -> Any:
    return chain(check_inventory.s("book", 1), charge.s(order_id, 1), ship.s(order_id))


def start(workdir: Path) -> tuple[_common.Server, _common.Server]:
    if not _common.port_free(PORT):
        raise RuntimeError(f"port {PORT} on 127.0.0.1 is in use")
    redis = _common.Server(
        "redis-server",
        [
            "redis-server",
            "--bind",
            _common.HOST,
            "--port",
            str(PORT),
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        workdir / "redis.log",
    )
    try:
        _common.wait_port(PORT, 30, redis)
        worker = _common.Server(
            "celery-worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.peers.celery_peer",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(CONCURRENCY),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench-{uuid.uuid4().hex[:6]}@localhost",
            ],
            workdir / "celery-worker.log",
            cwd=str(_common.ROOT),
            env={"OVERTURE_BENCH_REDIS": URL},
        )
    except BaseException:
        redis.stop()
        raise
    return redis, worker


def _bench(n: int, iterations: int, warmup: int, worker: _common.Server) -> dict[str, Any]:
    # the worker is up once it answers a ping and has run a warm-up round
    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=1.0):
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError("celery worker did not answer")
    for res in [fulfil(f"warm{i}").apply_async() for i in range(warmup)]:
        res.get(timeout=60)

    _common.log(f"celery W1 load n={n}")
    run = uuid.uuid4().hex[:6]
    t0 = time.time()
    results = [fulfil(f"{run}-{i}").apply_async() for i in range(n)]
    sent = time.time()
    outs = [r.get(timeout=600) for r in results]
    t1 = time.time()
    assert all(o["outcome"] == "shipped" for o in outs)
    w1: dict[str, Any] = {"n": n, "throughput": n / (t1 - t0), "producer_rate": n / (sent - t0)}

    _common.log(f"celery W1 1x1 iterations={iterations}")
    lat = []
    for i in range(iterations):
        s = time.time()
        fulfil(f"s{run}-{i}").apply_async().get(timeout=60)
        lat.append(time.time() - s)
    w1.update(_common.latency_summary(lat, "serial"), iterations=iterations)
    return w1


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "celery": version("celery"),
        "redis-py": version("redis"),
        "redis-server": next((w.split("=")[1] for w in redis if w.startswith("v=")), "?"),
    }


def run(workdir: Path, *, n: int, w2_n: int, iterations: int, warmup: int) -> dict:
    redis, worker = start(workdir)
    try:
        w1 = _bench(n, iterations, warmup, worker)
    finally:
        worker.stop(timeout=30)  # SIGTERM: warm shutdown
        redis.stop()
    return {
        "versions": _versions(),
        "tuning": TUNING,
        "durability": DURABILITY,
        "w1": w1,
        "w2": {"skipped": "Celery has no durable wait-for-correlated-event primitive"},
    }
