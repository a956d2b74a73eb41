"""Retention: W1 on SQLite with deletion running vs none, side by side in one run.

``python -m benchmarks.retention [-n N] [--repeat R]``. Each repeat runs, in turn and in a
fresh subprocess each (``runner.run_unit``): W1 load with ``retention=None`` (nothing is
deleted) and with ``retention=0`` (every instance is deleted by the engine's passes as soon
as it finished, so deletion runs during the whole timed phase: the worst case of a short
retention on a real clock, where a 1-minute retention would only start deleting after a
minute). Prints the medians: throughput, W1 p99 (trigger sent -> completion committed),
the file size at the end, instances deleted.
"""

from __future__ import annotations

import argparse
import statistics

from .measure import Options
from .runner import run_unit

SETTINGS: list[tuple[str, float | None]] = [("none", None), ("retention 0", 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="W1 instances per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in SETTINGS}
    for _ in range(args.repeat):
        for name, retention in SETTINGS:  # interleaved: drift of the machine hits both
            opts = Options("w1", "load", "sqlite", n=args.n, retention=retention)
            result = run_unit(opts)
            if "error" in result:
                raise SystemExit(f"{name}: {result['error']}")
            results[name].append(result)
    print(f"W1 on SQLite, n={args.n}, medians of {args.repeat} runs")
    print(f"{'':<14}{'inst/s':>10}{'p99 ms':>10}{'file MB':>10}{'deleted':>10}")
    for name, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(float(r[key]) for r in runs)

        print(
            f"{name:<14}{med('throughput'):>10.0f}{med('p99_ms'):>10.1f}"
            f"{med('file_mb'):>10.1f}{med('expired'):>10.0f}"
        )


if __name__ == "__main__":
    main()
