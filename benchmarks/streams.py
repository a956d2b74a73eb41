"""Streams benchmark: count per key in 10-second tumbling windows, on SQLite.

``N`` events over ``K`` keys are written to a fresh SQLite log first, keys in turn, event
times advancing ``--per-window`` events per 10 s (100,000 by default, as
``benchmarks/streams_kafka.py`` does: with 10,000 keys each key has 10 events in each
window, and 1,000,000 events close 90,000 windows as the stream goes on); then one engine
drains the log. Reported: events/s of the drain, window results emitted, the state bytes
per open window (the JSON a key's open windows take in keyed state), and the drain's CPU
seconds (every thread of the process) per 100,000 events, steadier than events/s on a
shared machine. ``--per-window 10000`` is the harsher shape: each key once per window, so
nearly every event closes a window and emits a result. Not a timed test.

    .venv/bin/python -m benchmarks.streams --events 1000000 --keys 10000
    .venv/bin/python -m benchmarks.streams --events 1000000 --keys 10000 --per-window 10000

Event-to-result latency under a paced producer, and Quix Streams side by side, are
measured on Kafka (``benchmarks/streams_kafka.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import overture as ov
from overture.backends import open_backend
from overture.streams.runtime import namespace

T0 = 1_800_000_000.0


def make_app() -> ov.App:
    app = ov.App("bench_streams")

    @app.window(
        source="view",
        key="user",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"n": ov.Count()},
        time_field="at",
        idle=None,
    )
    def counts(result: ov.WindowResult) -> ov.Event:
        return ov.Event.of("counted", {"user": result.key, "n": result.values["n"]})

    return app


def fill(url: str, events: int, keys: int, per_window: int) -> None:
    step = 10.0 / per_window
    with ov.Client(url) as client:
        chunk = 2000
        for start in range(0, events, chunk):
            client.send_many(
                ov.Event.of("view", {"user": f"u{i % keys}", "at": T0 + i * step}).envelope
                for i in range(start, min(start + chunk, events))
            )


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread (the commit's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain(url: str) -> tuple[float, float, dict[str, int], int, int]:
    app = make_app()
    backend = open_backend(url)
    engine = ov.Engine(app, backend, batch_size=2000)  # type: ignore[arg-type]
    began, cpu = time.perf_counter(), cpu_seconds()
    await engine.run_until_idle(max_iterations=10_000_000)
    elapsed, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    entries = backend.store.scan(namespace("counts"), b"k:")  # type: ignore[attr-defined]
    size = sum(len(v) for _, v in entries)
    await engine.stop(0)
    return elapsed, cpu, dict(engine.stats), len(entries), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--per-window", type=int, default=100_000, help="events per 10 s")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="streams-bench-"))
    url = f"sqlite:///{folder / 'streams.db'}"
    began = time.perf_counter()
    fill(url, args.events, args.keys, args.per_window)
    print(f"filled {args.events:,} events in {time.perf_counter() - began:.1f} s")
    elapsed, cpu, stats, open_keys, size = asyncio.run(drain(url))
    print(f"drained {stats['records']:,} records in {elapsed:.1f} s: "
          f"{args.events / elapsed:,.0f} events/s")  # fmt: skip
    # steadier than events/s on a shared machine: CPU (all threads) per 100,000 events
    print(f"CPU: {cpu:.1f} s, {cpu * 100_000 / args.events:.2f} s per 100k events")
    print(f"window results: {stats['stream_results']:,}; late: {stats['stream_late']}")
    if open_keys:
        print(f"open at the end: {open_keys:,} keys, {size / open_keys:.0f} state bytes per key")


if __name__ == "__main__":
    main()
