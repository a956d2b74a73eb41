"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_w1_memory_reports_positive_throughput(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--workloads", "w1", "--backends", "memory", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    (load,) = [r for r in doc["results"] if (r["workload"], r["mode"]) == ("w1", "load")]
    assert load["backend"] == "memory"
    assert load["median"]["throughput"] > 0
    assert load["median"]["p99_ms"] >= load["median"]["p50_ms"] > 0
    assert doc["machine"]["cpu_count"] >= 1
