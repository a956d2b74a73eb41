"""W5 and W6: W1 with its three steps as remote tasks, in separate processes.

W5:
``overture run --no-tasks`` (the engine), one ``overture worker`` (the tasks, from
``benchmarks/task_apps.py``) and this process as the client. W6 (``--workload w6``):
the steps are push tasks (``benchmarks/push_apps.py``), POSTed by the worker inside
``overture run`` to a local uvicorn endpoint in its own process. The client sends as C1
does:

- *load*: ``CONCURRENCY`` instances in flight (each sends one ``order.placed`` and awaits
  its result through the client, then the next); throughput = N / (first send -> last
  result), latency per instance = its send -> its result;
- *serial*: one at a time with the synchronous client, ``client.start(e).result()``.

    .venv/bin/python -m benchmarks.tasks_bench -n 5000 --iterations 200 --repeat 3
    .venv/bin/python -m benchmarks.tasks_bench --workload w6 -n 5000 --repeat 3

SQLite only here (WAL, ``synchronous=FULL``); a fresh database file per repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import overture as ov

from . import push_apps, stats, task_apps
from .client_observed import CONCURRENCY
from .workloads import order

APPS = {"w5": "benchmarks.task_apps:app", "w6": "benchmarks.push_apps:app"}
PUSH_SECRET = "whsec_" + base64.b64encode(b"overture-w6-benchmark-secret!!").decode()


PROFILE = os.environ.get("OVERTURE_BENCH_PROFILE")
"""A directory: run the engine and worker processes under cProfile, writing
``<dir>/engine.prof`` and ``<dir>/worker.prof`` (``python -m benchmarks.profiling``)."""


def _free_port() -> int:
    """A port nothing listens on now (the endpoint's: a fixed one could be another
    run's endpoint, which would then answer this run's pushes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _spawn(args: list[str], log: Path, module: str = "overture.cli") -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", module, *args]
    if module == "overture.cli":
        command += ["--log-level", "WARNING"]
    if PROFILE and module == "overture.cli":
        out = str(Path(PROFILE) / f"{args[0].replace('run', 'engine')}.prof")
        command[1:1] = ["-m", "cProfile", "-o", out]
    env = {**os.environ, push_apps.SECRET_ENV: PUSH_SECRET}
    with log.open("wb") as out_file:
        return subprocess.Popen(command, stdout=out_file, stderr=subprocess.STDOUT, env=env)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the push endpoint exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError("the push endpoint did not listen")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _load(app: ov.App, url: str, n: int, warmup: int, limit: float) -> dict[str, Any]:
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


def _serial(app: ov.App, url: str, iterations: int, warmup: int, timeout: float) -> dict[str, Any]:
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


def run_once(
    workload: str, n: int, iterations: int, warmup: int, timeout: float, kafka: str | None = None
) -> dict[str, Any]:
    """One repeat: a fresh database, the engine and worker (W5) or endpoint (W6)
    processes, load then serial."""
    with tempfile.TemporaryDirectory(prefix=f"ov-{workload}-") as tmp:
        url = (
            f"sqlite:///{Path(tmp) / 'bench.db'}"
            if kafka is None
            else f"kafka://{kafka}/w5-{uuid.uuid4().hex[:12]}"  # a fresh namespace
        )
        procs = []
        try:
            if workload == "w5":
                app = task_apps.app
                procs.append(
                    _spawn(
                        ["run", APPS[workload], "--no-tasks", "--backend", url],
                        Path(tmp) / "engine.log",
                    )
                )
                procs.append(
                    _spawn(
                        [
                            "worker",
                            APPS[workload],
                            "--concurrency",
                            str(CONCURRENCY),
                            "--backend",
                            url,
                        ],
                        Path(tmp) / "worker.log",
                    )
                )
            else:
                app = push_apps.app
                # the engine's tasks POST to the port in this variable (push_apps.PORT)
                port = _free_port()
                os.environ[push_apps.PORT_ENV] = str(port)
                endpoint = _spawn(
                    [
                        "benchmarks.push_apps:endpoint",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    Path(tmp) / "endpoint.log",
                    module="uvicorn",
                )
                procs.append(endpoint)
                _wait_listening(port, endpoint)
                procs.append(
                    _spawn(
                        [
                            "run",
                            APPS[workload],
                            "--task-concurrency",
                            str(CONCURRENCY),
                            "--backend",
                            url,
                        ],
                        Path(tmp) / "engine.log",
                    )
                )
            result = asyncio.run(_load(app, url, n, warmup, timeout))
            result.update(_serial(app, url, iterations, warmup, timeout))
        except BaseException:
            for log in Path(tmp).glob("*.log"):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-2000:]}")
            raise
        finally:
            for proc in reversed(procs):
                _stop(proc)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(APPS), default="w5")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--kafka", metavar="HOST:PORT", help="run on this Kafka broker instead of SQLite"
    )
    args = parser.parse_args(argv)
    runs = []
    for r in range(args.repeat):
        runs.append(
            run_once(args.workload, args.n, args.iterations, args.warmup, args.timeout, args.kafka)
        )
        print(f"repeat {r + 1}: {json.dumps(runs[-1])}", flush=True)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"{args.workload.upper()} {'kafka' if args.kafka else 'sqlite'} median of {len(runs)} "
        f"(load average {os.getloadavg()[0]:.2f}): "
        f"{median['throughput']:.0f} instances/s, load p50 {median['p50_ms']:.1f} ms "
        f"p99 {median['p99_ms']:.1f} ms; one at a time p50 {median['serial_p50_ms']:.2f} ms "
        f"p99 {median['serial_p99_ms']:.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": median}, indent=2))


if __name__ == "__main__":
    main()
