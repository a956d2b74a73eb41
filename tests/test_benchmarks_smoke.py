"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_quick(tmp_path: Path, args: list[str], timeout: float) -> Any:
    """Run ``python -m benchmarks --quick ARGS`` and return its JSON report."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", *args, "--json", str(out)]
    proc = subprocess.run(
        [*command, "--dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_quick_w1_memory_reports_positive_throughput(tmp_path: Path) -> None:
    args = ["--workloads", "w1", "--backends", "memory"]
    doc = run_quick(tmp_path, args, timeout=60)
    (load,) = [r for r in doc["results"] if (r["workload"], r["mode"]) == ("w1", "load")]
    assert load["backend"] == "memory"
    assert load["median"]["throughput"] > 0
    assert load["median"]["p99_ms"] >= load["median"]["p50_ms"] > 0
    assert doc["machine"]["cpu_count"] >= 1


def test_quick_w3_w4_m1_memory_report_their_metrics(tmp_path: Path) -> None:
    """W3, W4 and M1 with tiny N (about 10 s: W4's timers sleep up to 8 s)."""
    args = ["--workloads", "w3,w4,m1", "--backends", "memory", "-n", "100"]
    args += ["--timer-n", "100", "--memory-n", "500"]
    doc = run_quick(tmp_path, args, timeout=90)
    median = {r["workload"]: r["median"] for r in doc["results"]}
    assert median["w3"]["throughput"] > 0
    assert median["w3"]["handler_runs_per_event"] == 3
    assert median["w4"]["late_p99_ms"] >= median["w4"]["late_p50_ms"] >= 0
    assert median["w4"]["idle_window_clean"] == 1
    assert median["w4"]["due_mismatch_max_ms"] < 1
    assert median["m1"]["rss_mb"] > 0 and median["m1"]["start_rate"] > 0
    assert median["m1"]["cached_instances"] == 500


def test_quick_client_observed_w1_sqlite_reports_client_figures(tmp_path: Path) -> None:
    """C1: W1 driven and observed by a client in another process (100 in flight, then one
    at a time), next to nothing else."""
    args = ["--workloads", "c1", "--backends", "memory,sqlite", "-n", "300"]
    args += ["--iterations", "10"]
    doc = run_quick(tmp_path, args, timeout=90)
    by_mode = {r["mode"]: r for r in doc["results"] if r["workload"] == "c1"}
    assert {r["backend"] for r in by_mode.values()} == {"sqlite"}  # memory: no second process
    load, serial = by_mode["load"]["median"], by_mode["serial"]["median"]
    assert load["throughput"] > 0 and load["p99_ms"] >= load["p50_ms"] > 0
    assert load["sends_per_append"] > 1  # the client's concurrent sends were group-committed
    assert serial["serial_p99_ms"] >= serial["serial_p50_ms"] > 0
    assert "synchronous=FULL" in load["durability"]


def test_quick_w1_sync_and_inline_memory_report_throughput(tmp_path: Path) -> None:
    """W1 with def steps (thread pool) and with inline def steps, side by side."""
    args = ["--workloads", "w1sync,w1inline", "--backends", "memory"]
    args += ["-n", "200"]
    doc = run_quick(tmp_path, args, timeout=60)
    runs = {(r["workload"], r["mode"]): r["median"] for r in doc["results"]}
    assert set(runs) == {(w, m) for w in ("w1sync", "w1inline") for m in ("load", "drain")}
    for (_, mode), median in runs.items():
        assert median["throughput" if mode == "load" else "drain_throughput"] > 0


def test_streams_on_kafka_counts_every_window_and_measures_latency(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """``benchmarks.streams_kafka`` on the tests' broker, Overture's side (Quix Streams
    lives in ``.venv-peers``, which CI does not have), tiny N."""
    out = tmp_path / "streams.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.streams_kafka", "--systems", "overture"),
            *("--events", "4000", "--keys", "100", "--per-window", "1000", "--repeat", "1"),
            *("--rate", "400", "--seconds", "12", "--state-dir", ".overture/test-kafka"),
            *("--json", str(out)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    [throughput] = doc["throughput"]
    assert throughput["results"] == 3 * 100  # 4 windows of 100 keys, the last one open
    assert throughput["events_per_s"] > 0
    [latency] = doc["latency"]
    assert latency["results"] >= 100 and latency["p99_ms"] >= latency["p50_ms"] > 0
    assert 0 < latency["stored_bytes_per_window"] < 1000
