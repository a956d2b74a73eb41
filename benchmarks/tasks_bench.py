"""W5: W1 with its three steps as remote tasks, in three processes.

``overture run --no-tasks`` (the engine), one ``overture worker`` (the tasks, from
``benchmarks/task_apps.py``) and this process as the client, which sends as C1 does:

- *load*: ``CONCURRENCY`` instances in flight (each sends one ``order.placed`` and awaits
  its result through the client, then the next); throughput = N / (first send -> last
  result), latency per instance = its send -> its result;
- *serial*: one at a time with the synchronous client, ``client.start(e).result()``.

    .venv/bin/python -m benchmarks.tasks_bench -n 5000 --iterations 200 --repeat 3

SQLite only here (WAL, ``synchronous=FULL``); a fresh database file per repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import overture as ov

from . import stats
from .client_observed import CONCURRENCY
from .task_apps import app
from .workloads import order

APP = "benchmarks.task_apps:app"


PROFILE = os.environ.get("OVERTURE_BENCH_PROFILE")
"""A directory: run the engine and worker processes under cProfile, writing
``<dir>/engine.prof`` and ``<dir>/worker.prof`` (``python -m benchmarks.profiling``)."""


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "overture.cli", *args, "--log-level", "WARNING"]
    if PROFILE:
        out = str(Path(PROFILE) / f"{args[0].replace('run', 'engine')}.prof")
        command[1:1] = ["-m", "cProfile", "-o", out]
    with log.open("wb") as out_file:
        return subprocess.Popen(command, stdout=out_file, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _load(url: str, n: int, warmup: int, limit: float) -> dict[str, Any]:
    client = ov.AsyncClient(url, app=app)
    try:
        await _in_flight(client, [f"w{i}" for i in range(warmup)], limit)
        started = time.time()
        latency = await _in_flight(client, [f"o{i}" for i in range(n)], limit)
        elapsed = time.time() - started
    finally:
        await client.close()
    return {
        "throughput": n / elapsed,
        "p50_ms": stats.ms(stats.percentile(latency, 50)),
        "p99_ms": stats.ms(stats.percentile(latency, 99)),
    }


async def _in_flight(client: ov.AsyncClient, keys: list[str], limit: float) -> list[float]:
    todo = iter(keys)
    out: list[float] = []

    async def one() -> None:
        for key in todo:
            sent = time.time()
            handle = await client.start(order(key))
            await handle.result(timeout=limit)
            out.append(time.time() - sent)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    return out


def _serial(url: str, iterations: int, warmup: int, timeout: float) -> dict[str, Any]:
    latency = []
    with ov.Client(url, app=app) as client:
        for i in range(warmup + iterations):
            sent = time.time()
            client.start(order(f"s{i}")).result(timeout=timeout)
            latency.append(time.time() - sent)
    latency = latency[warmup:]
    return {
        "serial_p50_ms": stats.ms(stats.percentile(latency, 50)),
        "serial_p99_ms": stats.ms(stats.percentile(latency, 99)),
    }


def run_once(n: int, iterations: int, warmup: int, timeout: float) -> dict[str, Any]:
    """One repeat: a fresh database, the engine and worker processes, load then serial."""
    with tempfile.TemporaryDirectory(prefix="ov-w5-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'w5.db'}"
        engine = _spawn(["run", APP, "--no-tasks", "--backend", url], Path(tmp) / "engine.log")
        worker = _spawn(
            ["worker", APP, "--concurrency", str(CONCURRENCY), "--backend", url],
            Path(tmp) / "worker.log",
        )
        try:
            result = asyncio.run(_load(url, n, warmup, timeout))
            result.update(_serial(url, iterations, warmup, timeout))
        except BaseException:
            for name in ("engine", "worker"):
                sys.stderr.write((Path(tmp) / f"{name}.log").read_text()[-2000:])
            raise
        finally:
            _stop(worker)
            _stop(engine)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = []
    for r in range(args.repeat):
        runs.append(run_once(args.n, args.iterations, args.warmup, args.timeout))
        print(f"repeat {r + 1}: {json.dumps(runs[-1])}", flush=True)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"W5 sqlite median of {len(runs)} (load average {os.getloadavg()[0]:.2f}): "
        f"{median['throughput']:.0f} instances/s, load p50 {median['p50_ms']:.1f} ms "
        f"p99 {median['p99_ms']:.1f} ms; one at a time p50 {median['serial_p50_ms']:.2f} ms "
        f"p99 {median['serial_p99_ms']:.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": median}, indent=2))


if __name__ == "__main__":
    main()
