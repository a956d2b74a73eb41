"""C1: W1 measured from a client, as the peers are measured.

The engine runs in the measuring process (as ``overture run`` would); the client is a
separate process (``multiprocessing``, spawned) that sends one ``order.placed`` per
instance with :meth:`AsyncClient.start` and awaits each result through the client
(``await handle.result()``): completion is observed by the client, woken by the engine's
commit, after the client has read the instance's result. Nothing in the engine process
measures anything.

- *load*: ``CONCURRENCY`` (100) instances in flight: 100 tasks, each sends one event and
  awaits its result, then the next. Throughput = N / (first send -> last result in the
  client); latency per instance = its send call -> its result.
- *serial*: one at a time with the synchronous client: ``client.start(e).result()``.

Only SQLite: a ``memory://`` broker cannot be shared by two processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

import overture as ov

from . import stats
from .measure import Options, Result, _durability, running
from .workloads import order, w1_app

CONCURRENCY = 100


async def measure(opts: Options) -> Result:
    """Run the engine here and the client workload in a child process."""
    if opts.backend != "sqlite":
        raise ValueError("c1 needs a backend two processes can share: use --backends sqlite")
    async with running(opts) as bench:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client_main, args=(bench.url, opts, child), daemon=True)
        proc.start()
        try:
            result: Result = await asyncio.to_thread(_receive, parent, opts.timeout)
        finally:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        result["engine_stats"] = dict(bench.engine.stats)
        result["durability"] = _durability(bench.backend, opts.backend)
    result["peak_rss_mb"] = stats.peak_rss_mb()
    return result


def _receive(conn: Any, timeout: float) -> Result:
    if not conn.poll(timeout):
        raise TimeoutError(f"the client did not finish in {timeout:g}s")
    result: Result = conn.recv()
    if "error" in result:
        raise RuntimeError(f"client: {result['error']}")
    return result


def _client_main(url: str, opts: Options, conn: Any) -> None:
    try:
        if opts.mode == "load":
            result = asyncio.run(_load(url, opts))
        elif opts.mode == "serial":
            result = _serial(url, opts)
        else:
            raise ValueError(f"unsupported mode {opts.mode!r} for c1")
    except BaseException as exc:  # reported to the measuring process
        result = {"error": f"{type(exc).__name__}: {exc}"}
    conn.send(result)


async def _load(url: str, opts: Options) -> Result:
    app = w1_app()
    client = ov.AsyncClient(url, app=app)
    try:
        await _in_flight(client, [f"w{i}" for i in range(opts.warmup)], opts.timeout)
        keys = [f"o{i}" for i in range(opts.n)]
        started = time.time()
        latency = await _in_flight(client, keys, opts.timeout)
        elapsed = time.time() - started
        appends = client.sync._sends.appends
    finally:
        await client.close()
    return {
        "throughput": opts.n / elapsed,
        "p50_ms": stats.ms(stats.percentile(latency, 50)),
        "p99_ms": stats.ms(stats.percentile(latency, 99)),
        "concurrency": CONCURRENCY,
        "sends_per_append": (opts.warmup + opts.n) / max(1, appends),
    }


async def _in_flight(client: ov.AsyncClient, keys: list[str], limit: float) -> list[float]:
    """Send and await each key's instance, CONCURRENCY at a time; latency per instance."""
    todo = iter(keys)
    out: list[float] = []

    async def worker() -> None:
        for key in todo:
            sent = time.time()
            handle = await client.start(order(key))
            await handle.result(timeout=limit)
            out.append(time.time() - sent)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return out


def _serial(url: str, opts: Options) -> Result:
    with ov.Client(url, app=w1_app()) as client:
        latency = []
        for i in range(opts.warmup + opts.iterations):
            sent = time.time()
            client.start(order(f"s{i}")).result(timeout=opts.timeout)
            latency.append(time.time() - sent)
    latency = latency[opts.warmup :]
    return {
        "serial_p50_ms": stats.ms(stats.percentile(latency, 50)),
        "serial_p99_ms": stats.ms(stats.percentile(latency, 99)),
        "serial_max_ms": stats.ms(max(latency)),
        "iterations": opts.iterations,
    }
