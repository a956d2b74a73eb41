"""One measurement, run inside the current process (``runner`` gives each a fresh one).

The engine runs here as an asyncio task, exactly as ``overture run`` would run it. Events
come from a producer (``producer``), completions are detected by ``probe.CommitProbe``.

Latency of an instance = completion time - send time, where the send time is taken just
before the ``send_many`` call that carried its trigger (W1) or its payment event (W2), and
the completion time is taken right after the engine's commit that made the instance final
returned. The engine's own ``updated`` stamp (taken at the start of that engine iteration,
before the steps ran and before the commit's fsync) is reported too, as ``*_updated``.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import overture as ov
from overture.backends import open_backend
from overture.ports import Backend

from . import observing, stats
from .probe import CommitProbe
from .producer import LocalProducer, RemoteProducer, Sent, send
from .workloads import APPS, order, payment, w4_app

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Options:
    workload: str  # "w1" | "w2" | "w3" | "w4" | "m1" | "baseline"
    mode: str  # "load" | "serial" | "drain"
    backend: str  # "memory" | "sqlite"
    n: int = 5000  # instances (load)
    iterations: int = 200  # one-at-a-time rounds (serial)
    chunk: int = 100  # events per send_many call
    rate: float = 0.0  # load: producer pace in events/s (0 = as fast as it can)
    warmup: int = 50  # instances completed before the timed phase (not measured)
    batch: int = 100  # baseline only: instances per state transaction
    producer: str = "auto"  # "process" | "thread" | "auto" (process for sqlite load)
    directory: str = "/tmp"
    profile: str | None = None  # write a cProfile .prof of the timed phase here
    timeout: float = 300.0
    tracemalloc: bool = False  # M1: trace allocations while instances start (slow)
    observe: str = "off"  # the engine's observer (benchmarks/observing.py)
    retention: float | None = None  # seconds finished instances are kept; None: forever
    sample: float = 0.0  # load: seconds between samples of the file size (0: none)


IDLE_WINDOW = 2.0  # W4: seconds of CPU accounting while every instance sleeps


def timer_hold(n: int) -> float:
    """W4: seconds added to every instance's sleep, so that all ``n`` instances have
    started and the idle window has passed before the first timer is due (starts run at
    well over 4,000/s on both backends; the run checks that no timer fell due in it)."""
    return IDLE_WINDOW + 1.0 + n / 4000


def make_app(opts: Options) -> ov.App:
    if opts.workload == "w4":
        return w4_app(hold=timer_hold(opts.n))
    return APPS[opts.workload]()


class Bench:
    """An engine running as a task on this loop, with its probe."""

    def __init__(self, opts: Options, url: str, broker: Backend) -> None:
        self.opts = opts
        self.url = url
        self.backend = broker
        self.probe = CommitProbe(broker, track_work=opts.workload in ("w3", "w4"))
        kept = None if opts.retention is None else timedelta(seconds=opts.retention)
        self.observing = observing.Observing(opts.observe)
        self.engine = ov.Engine(
            make_app(opts),
            broker,
            cache_size=10_000,
            observer=self.observing.observer,
            retention=kept,
        )
        self.task: asyncio.Task[None] | None = None
        self.started = 0.0  # when the engine was started
        self.cpu_started = 0.0  # this process's CPU seconds then (stats.cpu_seconds)
        self.samples: list[list[float]] = []  # _sample's rows

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait on the loop (5 ms polls of in-memory counters) for ``predicate``."""
        deadline = time.monotonic() + self.opts.timeout
        while not predicate():
            if self.task is not None and self.task.done():
                self.task.result()
                raise RuntimeError(f"engine stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)


def _url(opts: Options) -> str:
    if opts.backend == "memory":
        return f"memory://bench-{uuid.uuid4().hex}"
    if opts.backend == "sqlite":
        return f"sqlite:///{os.path.abspath(os.path.join(opts.directory, 'bench.db'))}"
    raise ValueError(f"unknown backend {opts.backend!r}")


@asynccontextmanager
async def running(opts: Options) -> AsyncIterator[Bench]:
    url = _url(opts)
    broker = open_backend(url)
    bench = Bench(opts, url, broker)
    if opts.mode == "drain":  # fill the log before the engine starts
        client = ov.Client(broker, app=bench.engine.app)
        send(client, "order", [f"o{i}" for i in range(opts.n)], opts.chunk)
    await bench.engine.start()
    bench.started = time.time()
    bench.cpu_started = stats.cpu_seconds()
    bench.task = asyncio.create_task(bench.engine.run())
    try:
        yield bench
    finally:
        await bench.engine.stop()
        await bench.task
        if opts.backend != "memory":
            broker.close()


def _producer(opts: Options, url: str) -> LocalProducer | RemoteProducer:
    kind = opts.producer
    if kind == "auto":
        kind = "process" if opts.backend != "memory" and opts.mode == "load" else "thread"
    if kind == "process":
        if opts.backend == "memory":
            raise ValueError("memory:// brokers are per process: use a thread producer")
        return RemoteProducer(url, opts.workload)
    return LocalProducer(url, opts.workload)


def _durability(broker: Backend, backend: str) -> str:
    if backend == "memory":
        return "none (memory)"
    conn = getattr(broker, "_conn", None)
    if conn is None:
        return "unknown"
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return f"journal_mode={mode}, synchronous={names.get(sync, sync)}"


async def measure(opts: Options) -> Result:
    """Run the measurement ``opts`` describes; returns flat metrics."""
    async with running(opts) as bench:
        info: Result = {"durability": _durability(bench.backend, opts.backend)}
        n = 0
        if opts.mode == "load":
            info.update(await _load(bench))
            info["expired"] = bench.engine.stats["expired"]
            if bench.url.startswith("sqlite:///"):
                info["file_mb"] = _file_mb(bench.url.removeprefix("sqlite:///"))
        elif opts.mode == "serial":
            info.update(await _serial(bench))
        elif opts.mode == "drain" and opts.workload.startswith("w1"):
            info.update(await _drain(bench))
        else:
            raise ValueError(f"unsupported mode {opts.mode!r} for {opts.workload}")
        info["engine_stats"] = dict(bench.engine.stats)
        n = bench.probe.finished  # (warm-up included)
    observed = bench.observing.close()
    if "spans_exported" in observed:
        observed["spans_per_instance"] = observed["spans_exported"] / n
    info.update(observed)
    info["peak_rss_mb"] = stats.peak_rss_mb()
    return info


def _file_mb(path: str) -> float:
    """Size of a SQLite database with its WAL, in MiB."""
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p)) / (1 << 20)


# -- load: N instances as fast as the producer can send them ----------------------------------


async def _load(bench: Bench) -> Result:
    opts, probe = bench.opts, bench.probe
    producer = _producer(opts, bench.url)
    try:
        await _warm_up(bench, producer)
        keys = [f"o{i}" for i in range(opts.n)]
        base_finished = probe.finished
        rss_before = stats.peak_rss_mb()
        starts: Sent | None = None
        if opts.workload == "w2":  # untimed phase: start N instances, wait until all wait
            base_waits = probe.waits_added
            starts = await asyncio.to_thread(producer.send, "order", keys, opts.chunk)
            await bench.until(lambda: probe.waits_added >= base_waits + opts.n, "waits")
        base_commits, base_rows, base_secs = (
            probe.commits,
            probe.instance_rows,
            probe.commit_seconds,
        )
        base_stats = dict(bench.engine.stats)
        profiler = _start_profile(bench)
        kind = "payment" if opts.workload == "w2" else "order"
        cpu_before = stats.cpu_seconds()
        sampler = asyncio.create_task(_sample(bench, base_finished))
        try:
            sent = await asyncio.to_thread(producer.send, kind, keys, opts.chunk, opts.rate)
            await bench.until(lambda: probe.finished >= base_finished + opts.n, "completions")
        finally:
            sampler.cancel()
        cpu = stats.cpu_seconds() - cpu_before
        _stop_profile(bench, profiler)
    finally:
        await asyncio.to_thread(producer.close)
    trigger_of = (lambda i: probe.by_key[sent.keys[i]]) if starts else (lambda i: sent.ids[i])
    done = [probe.done[trigger_of(i)] for i in range(len(sent.ids))]
    last = max(d.committed for d in done)
    last_updated = max(d.updated for d in done)
    latency = [d.committed - t for d, t in zip(done, sent.times, strict=True)]
    latency_updated = [d.updated - t for d, t in zip(done, sent.times, strict=True)]
    commits = probe.commits - base_commits
    out: Result = {
        "throughput": opts.n / (last - sent.first),
        "throughput_updated": opts.n / (last_updated - sent.first),
        "p50_ms": stats.ms(stats.percentile(latency, 50)),
        "p99_ms": stats.ms(stats.percentile(latency, 99)),
        "p50_updated_ms": stats.ms(stats.percentile(latency_updated, 50)),
        "p99_updated_ms": stats.ms(stats.percentile(latency_updated, 99)),
        "max_ms": stats.ms(max(latency)),
        "producer_rate": opts.n / (sent.ended - sent.first),
        "send_call_p50_ms": stats.ms(stats.percentile(sent.call_seconds, 50)),
        "send_call_p99_ms": stats.ms(stats.percentile(sent.call_seconds, 99)),
        "send_call_max_ms": stats.ms(max(sent.call_seconds)),
        "commits": commits,
        "instance_rows_per_commit": (probe.instance_rows - base_rows) / max(1, commits),
        "commit_ms_mean": stats.ms((probe.commit_seconds - base_secs) / max(1, commits)),
        "records_per_batch": (bench.engine.stats["records"] - base_stats["records"])
        / max(1, bench.engine.stats["batches"] - base_stats["batches"]),
        "producer": "process" if isinstance(producer, RemoteProducer) else "thread",
        # the engine process's CPU per instance: its loop, commit and step threads and
        # the probe (a thread producer's counts too; a process producer's is its own)
        "cpu_us": cpu * 1e6 / opts.n,
    }
    if bench.samples:
        out["samples"] = bench.samples
    if starts is not None:
        out["start_rate"] = opts.n / (probe.last_wait - starts.first)
        out["rss_mb_per_1k_waiting"] = (stats.peak_rss_mb() - rss_before) * 1000 / opts.n
    return out


async def _sample(bench: Bench, base_finished: int) -> None:
    """Every ``opts.sample`` seconds: (seconds, instances finished, deleted, file MiB)."""
    if bench.opts.sample <= 0 or not bench.url.startswith("sqlite:///"):
        return
    path = bench.url.removeprefix("sqlite:///")
    started = time.monotonic()
    while True:
        bench.samples.append(
            [
                round(time.monotonic() - started, 1),
                bench.probe.finished - base_finished,
                bench.engine.stats["expired"],
                round(_file_mb(path), 1),
            ]
        )
        await asyncio.sleep(bench.opts.sample)


async def _warm_up(bench: Bench, producer: LocalProducer | RemoteProducer) -> None:
    opts, probe = bench.opts, bench.probe
    if opts.warmup <= 0:
        return
    keys = [f"warm{i}" for i in range(opts.warmup)]
    target = probe.finished + len(keys)
    await asyncio.to_thread(producer.send, "order", keys, opts.chunk)
    if opts.workload == "w2":
        await bench.until(lambda: probe.waits_added >= len(keys), "warm-up waits")
        await asyncio.to_thread(producer.send, "payment", keys, opts.chunk)
    await bench.until(lambda: probe.finished >= target, "warm-up completions")


# -- drain: N triggers already in the log when the engine starts ------------------------------


async def _drain(bench: Bench) -> Result:
    """Engine-only capacity: no producer competes for the CPU (or the GIL)."""
    probe, n = bench.probe, bench.opts.n
    profiler = _start_profile(bench)
    await bench.until(lambda: probe.finished >= n, "completions")
    cpu = stats.cpu_seconds() - bench.cpu_started
    _stop_profile(bench, profiler)
    last = max(d.committed for d in probe.done.values())
    return {
        "drain_throughput": n / (last - bench.started),
        "drain_cpu_us": cpu * 1e6 / n,
        "drain_instances_per_commit": probe.instance_rows / max(1, probe.commits),
        "drain_commit_ms_mean": stats.ms(probe.commit_seconds / max(1, probe.commits)),
    }


# -- serial: one instance (or one event) at a time --------------------------------------------


async def _serial(bench: Bench) -> Result:
    opts, probe = bench.opts, bench.probe
    total = opts.warmup + opts.iterations
    keys = [f"s{i}" for i in range(total)]
    client = ov.Client(bench.url, app=bench.engine.app)
    try:
        if opts.workload == "w2":  # start every instance first; they all wait
            await asyncio.to_thread(send, client, "order", keys, opts.chunk)
            await bench.until(lambda: probe.waits_added >= total, "waits")
        profiler = _start_profile(bench)
        latency = await asyncio.to_thread(_one_at_a_time, bench, client, keys)
        _stop_profile(bench, profiler)
    finally:
        client.close()
    latency = latency[opts.warmup :]
    return {
        "serial_p50_ms": stats.ms(stats.percentile(latency, 50)),
        "serial_p99_ms": stats.ms(stats.percentile(latency, 99)),
        "serial_max_ms": stats.ms(max(latency)),
        "iterations": opts.iterations,
    }


def _one_at_a_time(bench: Bench, client: ov.Client, keys: list[str]) -> list[float]:
    """Client thread: send one event, block until its instance's commit, repeat."""
    probe, w2 = bench.probe, bench.opts.workload == "w2"
    out: list[float] = []
    for key in keys:
        envelope = client.envelope(payment(key) if w2 else order(key))
        sent = time.time()
        client.send_many([envelope])
        trigger = envelope.id

        def finished(key: str = key, trigger: str = trigger) -> bool:
            return (key in probe.by_key) if w2 else (trigger in probe.done)

        if not probe.wait(finished, bench.opts.timeout):
            raise TimeoutError(f"instance for {key} did not complete")
        done = probe.done[probe.by_key[key] if w2 else trigger]
        out.append(done.committed - sent)
    return out


# -- profiling ----------------------------------------------------------------------------------


def _start_profile(bench: Bench) -> cProfile.Profile | None:
    if bench.opts.profile is None:
        return None
    main = cProfile.Profile()
    if bench.opts.backend != "memory":  # SQLite commits run in an executor thread
        bench.probe.profiler = cProfile.Profile()
    main.enable()
    return main


def _stop_profile(bench: Bench, main: cProfile.Profile | None) -> None:
    if main is None or bench.opts.profile is None:
        return
    main.disable()
    main.dump_stats(bench.opts.profile)
    commit = bench.probe.profiler
    if commit is not None:
        bench.probe.profiler = None
        commit.dump_stats(bench.opts.profile + ".commit")
