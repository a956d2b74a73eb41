"""W3 (fan-out), W4 (timers) and M1 (memory): one measurement in the current process.

Same machinery as ``measure`` (engine as an asyncio task, ``probe.CommitProbe`` for
completions, producers from ``producer``); each function returns flat metrics.

* W3: N ``user.signed_up`` events as fast as the producer can; an event is *done* at the
  commit after which its instance is final and none of its three handler rows is still
  stored (see ``probe``). Throughput = N / (first send -> the last event's done commit).
* W4: N instances sleeping ``hold + uniform[1, 5)`` s. Lateness per instance = the commit
  that completed it - its due time, computed here as the instance's ``created`` stamp (the
  engine clock reading its sleep was measured from) + its sleep; cross-checked against the
  due of the stored timer row. Idle CPU = ``getrusage`` user+sys of this process over a
  2 s window after every timer is stored and before the first is due.
* M1: N instances waiting (no timeout) for an event never sent; RSS once all waits are
  committed, against RSS before the first send.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import time
import tracemalloc

from . import stats
from .measure import (
    IDLE_WINDOW,
    Bench,
    Options,
    Result,
    _durability,
    _producer,
    _start_profile,
    _stop_profile,
    running,
    timer_hold,
)
from .producer import LocalProducer, RemoteProducer
from .workloads import HANDLER_RUNS, sleep_seconds

WORKLOADS = ("w3", "w4", "m1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def measure(opts: Options) -> Result:
    """Run the W3/W4/M1 measurement ``opts`` describes; returns flat metrics."""
    async with running(opts) as bench:
        info: Result = {"durability": _durability(bench.backend, opts.backend)}
        producer = _producer(opts, bench.url)
        try:
            if opts.workload == "w3":
                info.update(await _fanout(bench, producer))
            elif opts.workload == "w4":
                info.update(await _timers(bench, producer))
            elif opts.workload == "m1":
                info.update(await _memory(bench, producer))
            else:
                raise ValueError(f"not a scenario workload: {opts.workload!r}")
        finally:
            await asyncio.to_thread(producer.close)
        info["engine_stats"] = dict(bench.engine.stats)
        info["producer"] = "process" if isinstance(producer, RemoteProducer) else "thread"
    info["peak_rss_mb"] = stats.peak_rss_mb()
    return info


def _pcts(prefix: str, seconds: list[float]) -> Result:
    return {
        f"{prefix}p50_ms": stats.ms(stats.percentile(seconds, 50)),
        f"{prefix}p99_ms": stats.ms(stats.percentile(seconds, 99)),
        f"{prefix}max_ms": stats.ms(max(seconds)),
    }


# -- W3: fan-out --------------------------------------------------------------------------------


async def _fanout(bench: Bench, producer: LocalProducer | RemoteProducer) -> Result:
    opts, probe = bench.opts, bench.probe

    def all_done(target: int) -> bool:
        return probe.finished >= target and not probe.handlers_pending

    if opts.warmup > 0:
        warm = [f"warm{i}" for i in range(opts.warmup)]
        target = probe.finished + len(warm)
        await asyncio.to_thread(producer.send, "signup", warm, opts.chunk)
        await bench.until(lambda: all_done(target), "warm-up")
    keys = [f"u{i}" for i in range(opts.n)]
    target = probe.finished + opts.n
    runs = HANDLER_RUNS[0]
    commits, rows, secs = probe.commits, probe.instance_rows, probe.commit_seconds
    profiler = _start_profile(bench)
    sent = await asyncio.to_thread(producer.send, "signup", keys, opts.chunk, opts.rate)
    await bench.until(lambda: all_done(target), "instances and handlers")
    _stop_profile(bench, profiler)
    done = [max(probe.done[eid].committed, probe.handlers_done.get(eid, 0.0)) for eid in sent.ids]
    latency = [d - t for d, t in zip(done, sent.times, strict=True)]
    commits = probe.commits - commits
    stored = sum(1 for eid in sent.ids if eid in probe.handlers_done)
    return {
        "throughput": opts.n / (max(done) - sent.first),
        **_pcts("", latency),
        "producer_rate": opts.n / (sent.ended - sent.first),
        "send_call_p99_ms": stats.ms(stats.percentile(sent.call_seconds, 99)),
        "handler_runs_per_event": (HANDLER_RUNS[0] - runs) / opts.n,
        "handler_rows_stored_pct": 100.0 * stored / opts.n,
        "commits": commits,
        "instance_rows_per_commit": (probe.instance_rows - rows) / max(1, commits),
        "commit_ms_mean": stats.ms((probe.commit_seconds - secs) / max(1, commits)),
    }


# -- W4: timers ---------------------------------------------------------------------------------


async def _timers(bench: Bench, producer: LocalProducer | RemoteProducer) -> Result:
    """No warm-up: warm-up instances would sleep too, and their timers fire in the window."""
    opts, probe, engine = bench.opts, bench.probe, bench.engine
    hold = timer_hold(opts.n)
    keys = [f"r{i}" for i in range(opts.n)]
    sent = await asyncio.to_thread(producer.send, "reminder", keys, opts.chunk, opts.rate)
    await bench.until(lambda: len(probe.timer_due) >= opts.n, "timers stored")
    stored_all = time.time()
    # the idle window: nothing here runs on the loop but the engine (no polling)
    batches, cpu, wall = engine.stats["batches"], stats.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(IDLE_WINDOW)
    cpu, wall = stats.cpu_seconds() - cpu, time.perf_counter() - wall
    idle_batches = engine.stats["batches"] - batches
    window_end = time.time()
    rss_sleeping = stats.rss_mb()
    first_due = min(probe.timer_due.values())
    await bench.until(lambda: probe.finished >= opts.n, "timer completions")

    send_time = dict(zip(sent.keys, sent.times, strict=True))
    late: list[float] = []
    late_updated: list[float] = []
    late_send: list[float] = []
    mismatch = 0.0
    for done in probe.done.values():
        assert done.key is not None
        sleep = hold + sleep_seconds(done.key)
        due = done.created + sleep
        mismatch = max(mismatch, abs(due - probe.timer_due[done.instance_id]))
        late.append(done.committed - due)
        late_updated.append(done.updated - due)
        late_send.append(done.committed - (send_time[done.key] + sleep))
    dues = sorted(probe.timer_due.values())
    return {
        **_pcts("late_", late),
        "late_updated_p50_ms": stats.ms(stats.percentile(late_updated, 50)),
        "late_updated_p99_ms": stats.ms(stats.percentile(late_updated, 99)),
        "late_from_send_p50_ms": stats.ms(stats.percentile(late_send, 50)),
        "late_from_send_p99_ms": stats.ms(stats.percentile(late_send, 99)),
        "early": sum(1 for v in late if v < 0),
        "due_mismatch_max_ms": stats.ms(mismatch),
        "idle_cpu_pct": 100.0 * cpu / wall,
        "idle_batches": idle_batches,
        "idle_window_clean": int(window_end < first_due),
        "idle_margin_s": first_due - window_end,
        "hold_s": hold,
        "timers_per_s": opts.n / (dues[-1] - dues[0]),
        "start_rate": opts.n / (stored_all - sent.first),
        "rss_sleeping_mb": rss_sleeping,
        "commits": probe.commits,
    }


# -- M1: memory per waiting instance ------------------------------------------------------------


async def _memory(bench: Bench, producer: LocalProducer | RemoteProducer) -> Result:
    """No warm-up: every waiting instance counts."""
    opts, probe, engine = bench.opts, bench.probe, bench.engine
    keys = [f"s{i}" for i in range(opts.n)]
    gc.collect()
    rss_before = stats.rss_mb()
    if opts.tracemalloc:
        tracemalloc.start()
    send = producer.send
    sent = await asyncio.to_thread(send, "session", keys, opts.chunk, opts.rate, False)
    await bench.until(lambda: probe.waits_added >= opts.n, "waits")
    out: Result = {"start_rate": opts.n / (probe.last_wait - sent.first)}
    del keys, sent
    gc.collect()
    rss = stats.rss_mb()
    out.update(
        {
            "rss_mb": rss,
            "rss_before_mb": rss_before,
            "rss_mb_per_1k_waiting": (rss - rss_before) * 1000 / opts.n,
            "cached_instances": engine.cached_instances,
            "commits": probe.commits,
        }
    )
    if opts.backend == "sqlite":
        out["db_mb"] = _file_mb(bench.url.removeprefix("sqlite:///"))
    if opts.tracemalloc:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        out.update(_allocations(snapshot, opts.n))
    return out


def _file_mb(path: str) -> float:
    """Size of a SQLite database with its WAL, in MiB."""
    files = [path, path + "-wal"]
    return sum(os.path.getsize(f) for f in files if os.path.exists(f)) / 2**20


def _allocations(snapshot: tracemalloc.Snapshot, n: int) -> Result:
    """The largest live allocation sites (file:line) and files, per 1,000 instances."""
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = snapshot.statistics("lineno")
    files = snapshot.statistics("filename")
    total = sum(s.size for s in lines)

    def where(stat: tracemalloc.Statistic, line: bool = True) -> str:
        frame = stat.traceback[0]
        name = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", frame.filename)
        name = name.removeprefix(REPO + os.sep)
        return f"{name}:{frame.lineno}" if line else name

    return {
        "traced_mb": total / 2**20,
        "traced_kb_per_1k": total / 1024 * 1000 / n,
        "tracemalloc_top": [
            f"{s.size / 1024 * 1000 / n:8.1f} KiB/1k {s.count * 1000 / n:8.0f} blocks/1k  "
            f"{where(s)}"
            for s in lines[:15]
        ],
        "tracemalloc_files": [
            f"{s.size / 1024 * 1000 / n:8.1f} KiB/1k  {where(s, line=False)}" for s in files[:8]
        ],
    }
