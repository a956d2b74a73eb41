"""Retention: W1 with deletion running vs none, on SQLite and on Kafka.

``python -m benchmarks.retention [-n N] [--retention S] [--repeat R] [--kafka N]``.

SQLite (each run in a fresh subprocess, ``runner.run_unit``; the two settings interleaved
per repeat so that the machine's drift hits both): W1 load over N instances (default
1,000,000) with ``retention=None`` (nothing deleted) and with a retention of S seconds
(default 60) on the real clock, so that deletion starts S seconds into the run and then
runs beside the load. Prints the medians (throughput, W1 p99 from trigger sent to
completion committed, CPU of the engine process per instance, file size at the end,
instances deleted) and the file size sampled every 10 s of the first repeat: it grows
for S seconds, then flattens as the passes delete what finished S seconds earlier.

Kafka (``--kafka N``, default off; in this process, on the broker of ``--kafka-dir``,
started if it does not run): W1 over N instances on a fresh namespace with retention
none vs 0, then ``--settle`` seconds of one trigger a second (live traffic, which rolls
the changelog's segments so that the broker's cleaner compacts them), then the
changelog's size: the records a restore reads (what an engine reads on assignment),
those that are tombstones, and the bytes of its segment files in the broker's log dirs.
The namespace's changelog is created with small ``segment.ms``, ``min.cleanable.dirty.
ratio`` and ``delete.retention.ms`` in both settings, so that compaction runs within the
benchmark (with Overture's defaults, 1 GiB segments, a namespace this small is never
compacted: see docs/retention.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

import overture as ov
from overture.backends.kafka.backend import KafkaBackend
from overture.backends.kafka.reading import read_changelog, reader
from overture.backends.kafka.settings import KafkaSettings, parse
from overture.backends.kafka.topics import CHANGELOG_CONFIG, wanted_configs
from overture.devkafka import start_broker, stop_broker
from overture.runtime.host import Host

from . import stats
from .measure import Options
from .runner import run_unit
from .workloads import order, w1_app

ROOT = Path(__file__).resolve().parent.parent

COMPACT_SOON = {
    "segment.ms": "5000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "1000",
    "min.compaction.lag.ms": "0",
}
"""The changelog configs that let the broker's cleaner run within the benchmark."""


def sqlite(
    n: int, retention: float, repeat: int, out: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    settings: list[tuple[str, float | None]] = [
        ("none", None),
        (f"retention {retention:g}s", retention),
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in settings}
    for _ in range(repeat):
        for name, kept in settings:
            opts = Options("w1", "load", "sqlite", n=n, retention=kept, sample=10.0, timeout=3600.0)
            result = run_unit(opts)
            if "error" in result:
                raise SystemExit(f"{name}: {result['error']}")
            results[name].append(result)
            print(f"  {name}: {result['throughput']:.0f} inst/s", flush=True)
            if out is not None:  # after every run: a run cut short keeps what it measured
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"sqlite": results}))
    print(f"\nW1 on SQLite, n={n:,}, medians of {repeat} runs")
    print(
        f"{'':<16}{'inst/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/inst':>13}"
        f"{'file MB':>9}{'deleted':>10}"
    )
    for name, runs in results.items():
        med = _median(runs)
        print(
            f"{name:<16}{med('throughput'):>9.0f}{med('p50_ms'):>9.0f}{med('p99_ms'):>9.0f}"
            f"{med('cpu_us') / 1000:>13.3f}{med('file_mb'):>9.1f}{med('expired'):>10.0f}"
        )
    print("\nfile size (MiB) over time, first repeat: seconds / finished / deleted / MiB")
    for name, runs in results.items():
        rows = runs[0].get("samples", [])
        print(
            f"{name}: " + "  ".join(f"{t:.0f}s {f:,.0f} {d:,.0f} {mb:.0f}" for t, f, d, mb in rows)
        )
    return results


def _median(runs: Sequence[Mapping[str, Any]]) -> Callable[[str], float]:
    """The median of a metric over ``runs``."""
    return lambda key: statistics.median(float(r[key]) for r in runs)


# -- Kafka ------------------------------------------------------------------------------------


def changelog_size(settings: KafkaSettings, data_dir: Path, partitions: int) -> dict[str, float]:
    """Records a restore reads (and tombstones among them), and the bytes of the
    changelog's segment files in the broker's log dirs."""
    consumer = reader(settings, "bench-restore")
    started = time.monotonic()
    try:
        read = read_changelog(
            consumer, settings.changelog_topic, dict.fromkeys(range(partitions), 0)
        )
    finally:
        consumer.close()
    seconds = time.monotonic() - started
    records = [r for rs in read.values() for r in rs]
    size = sum(
        f.stat().st_size
        for p in range(partitions)
        for f in (data_dir / f"{settings.changelog_topic}-{p}").glob("*.log")
    )
    return {
        "records": len(records),
        "tombstones": sum(1 for _, v in records if v is None),
        "mib": size / (1 << 20),
        "read_seconds": seconds,
    }


def _create_topics(settings: KafkaSettings, partitions: int) -> None:
    admin = AdminClient(settings.config())
    topics = [settings.events_topic, settings.internal_topic, settings.changelog_topic]
    new = []
    for name in topics:
        config = wanted_configs(settings, name)
        if name == settings.changelog_topic:
            config = {**CHANGELOG_CONFIG, **COMPACT_SOON}
        new.append(NewTopic(name, num_partitions=partitions, replication_factor=1, config=config))
    for future in admin.create_topics(new).values():
        future.result(30)


async def _kafka_once(
    bootstrap: str, data_dir: Path, n: int, retention: float | None, settle: float
) -> dict[str, float]:
    partitions = 2
    url = f"kafka://{bootstrap}/bret{uuid.uuid4().hex[:8]}?partitions={partitions}"
    kept = None if retention is None else timedelta(seconds=retention)
    _create_topics(parse(url, retention=kept), partitions)
    backend = KafkaBackend(url, retention=kept)
    try:
        return await _kafka_load(backend, data_dir, n, kept, settle, partitions)
    finally:
        backend.close()


async def _kafka_load(
    backend: KafkaBackend,
    data_dir: Path,
    n: int,
    kept: timedelta | None,
    settle: float,
    partitions: int,
) -> dict[str, float]:
    app = w1_app()
    host = Host(app, backend, retention=kept)
    await host.start()
    runner = asyncio.create_task(host.run())
    client = ov.Client(backend, app=app)

    def total(stat: str) -> int:
        return sum(e.stats[stat] for e in host.engines.values())

    async def until(predicate: Any, what: str) -> None:
        deadline = time.monotonic() + 1800.0
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    committed: set[str] = set()  # finished instances whose commit the changelog shows

    def seen(ids: list[str] | None) -> None:
        committed.update(ids or ())

    unwatch = backend.watch_finished(seen)

    def produce() -> None:
        for start in range(0, n, 500):
            client.send_many([client.envelope(order(f"o{i}")) for i in range(start, start + 500)])

    try:
        cpu = stats.cpu_seconds()
        started = time.monotonic()
        producer = threading.Thread(target=produce)
        producer.start()
        await until(lambda: len(committed) >= n, "completions")
        seconds = time.monotonic() - started
        cpu = stats.cpu_seconds() - cpu
        unwatch()
        await asyncio.to_thread(producer.join)
        before = await asyncio.to_thread(changelog_size, backend.settings, data_dir, partitions)
        if kept is not None:
            await until(lambda: total("expired") >= n, "deletions")
        deadline = time.monotonic() + settle
        i = 0
        while time.monotonic() < deadline:  # live traffic: rolls segments, so they compact
            await asyncio.to_thread(client.send_many, [client.envelope(order(f"t{i}"))])
            i += 1
            await asyncio.sleep(1.0)
        expired = total("expired")
        after = await asyncio.to_thread(changelog_size, backend.settings, data_dir, partitions)
    finally:
        client.close()
        await host.stop()
        await runner
    return {
        "throughput": n / seconds,
        "cpu_ms_per_instance": cpu * 1000 / n,  # this process: engines, producer, client
        "expired": expired,
        **{f"done_{k}": v for k, v in before.items()},
        **{f"settled_{k}": v for k, v in after.items()},
    }


def kafka(n: int, repeat: int, settle: float, state_dir: Path) -> dict[str, list[dict[str, float]]]:
    broker = start_broker(state_dir, timeout=180)
    settings: list[tuple[str, float | None]] = [("none", None), ("retention 0", 0.0)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in settings}
    try:
        for _ in range(repeat):
            for name, kept in settings:
                result = asyncio.run(
                    _kafka_once(broker.bootstrap, state_dir / "data", n, kept, settle)
                )
                results[name].append(result)
                print(
                    f"  {name}: {json.dumps({k: round(v, 3) for k, v in result.items()})}",
                    flush=True,
                )
    finally:
        if broker.started:
            stop_broker(state_dir)
    print(f"\nW1 on Kafka (2 partitions, 1 process), n={n:,}, medians of {repeat} runs")
    print(
        f"{'':<14}{'inst/s':>9}{'CPU ms/inst':>13}{'records at end':>16}"
        f"{'MiB':>7}{f'records +{settle:g}s':>16}{'tombstones':>12}{'MiB':>7}{'read s':>8}"
    )
    for name, runs in results.items():
        med = _median(runs)
        print(
            f"{name:<14}{med('throughput'):>9.0f}{med('cpu_ms_per_instance'):>13.3f}"
            f"{med('done_records'):>16,.0f}{med('done_mib'):>7.1f}{med('settled_records'):>16,.0f}"
            f"{med('settled_tombstones'):>12,.0f}{med('settled_mib'):>7.1f}"
            f"{med('settled_read_seconds'):>8.2f}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="W1 instances per SQLite run")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds (SQLite)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kafka", type=int, default=0, help="W1 instances per Kafka run")
    parser.add_argument("--kafka-only", action="store_true", help="skip the SQLite runs")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds of trickle (Kafka)")
    parser.add_argument("--kafka-dir", type=Path, default=ROOT / ".overture" / "bench-kafka")
    parser.add_argument("--out", type=Path, help="write every run's results here (JSON)")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if not args.kafka_only:
        out["sqlite"] = sqlite(args.n, args.retention, args.repeat, args.out)
    if args.kafka:
        out["kafka"] = kafka(args.kafka, args.repeat, args.settle, args.kafka_dir.resolve())
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
