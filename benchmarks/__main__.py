"""``python -m benchmarks``: run the suite, show a progress bar, print a table.

Every measurement (workload x mode x backend x repeat) runs in a fresh subprocess; the
table shows the median over repeats. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from . import profiling, report
from .measure import Options
from .observing import OBSERVE
from .runner import run_unit

WORKLOADS = ("w1", "w1sync", "w1inline", "c1", "w2", "w3", "w4", "m1", "baseline")
BACKENDS = ("memory", "sqlite")

NOTES = [
    "Throughput: N / (first send_many call -> the commit that completed the last instance).",
    "Latency, per instance: time.time() just before the send_many carrying its trigger (W1) "
    "or its payment (W2) -> time.time() right after the engine's Store.commit that made it "
    "final returned (a wrapper around the broker's commit method; for SQLite after the fsync).",
    "Load runs send N events as fast as the producer can (open loop, so latency includes "
    "queueing); the producer is a separate process for sqlite (like `overture send`) and a "
    "thread for memory. W2 is timed from the first payment, once all N instances wait.",
    "Engine-only (W1): N triggers are appended before the engine starts; N / (engine start "
    "-> last completion commit), so no producer competes for the CPU or the GIL.",
    "1x1: the engine runs as an asyncio task in the measuring process; a client thread sends "
    "one event, blocks on a condition variable the commit wrapper signals, and repeats.",
    "W3: an event is done at the commit after which its instance is final and none of its 3 "
    "handler rows is stored; throughput N / (first send -> last such commit).",
    "W4: lateness = completion commit - due (the instance's created stamp + its sleep); "
    "every sleep is hold + uniform[1,5) s, the hold leaving a 2 s window, after all timers "
    "are stored and before the first is due, in which getrusage gives the idle CPU.",
    "M1: RSS (/proc/self/statm, after gc) once all N waits are committed, minus RSS before "
    "the first send; memory:// keeps its log and store in this process, so they count.",
]


@dataclass(frozen=True, slots=True)
class Plan:
    workload: str
    mode: str
    backend: str
    repeat: int
    observe: str = "off"

    @property
    def key(self) -> tuple[str, str, str]:
        """The report's unit: the backend named with its observer unless ``off``."""
        label = self.backend if self.observe == "off" else f"{self.backend}+{self.observe}"
        return self.workload, self.mode, label


def _csv(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
    return items


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=",".join(WORKLOADS))
    p.add_argument("--backends", default="memory,sqlite", help="memory,sqlite")
    p.add_argument(
        "--modes",
        default=",".join(ALL_MODES),
        help=f"{','.join(ALL_MODES)}: only these measurements of W1/W2 (drain = engine-only)",
    )
    p.add_argument("-n", type=int, default=None, help="instances per W1/W2/W3 run (5000)")
    p.add_argument("--timer-n", type=int, default=None, help="W4 instances (10000)")
    p.add_argument("--memory-n", type=int, default=None, help="M1 instances (100000)")
    p.add_argument("--iterations", type=int, default=None, help="1-at-a-time rounds (200)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (3)")
    p.add_argument("--chunk", type=int, default=100, help="events per send_many call")
    p.add_argument("--rate", type=float, default=0.0, help="pace load producers (events/s)")
    p.add_argument("--warmup", type=int, default=None, help="untimed instances first (50)")
    p.add_argument("--producer", choices=("auto", "process", "thread"), default="auto")
    p.add_argument("--baseline-batch", type=int, default=None, help="default: W1-sqlite's")
    p.add_argument("--dir", default=None, help="where SQLite files go (default: temp dir)")
    p.add_argument("--json", default=None, help="write all results to this file")
    p.add_argument("--profile", default=None, help="write cProfile files of load runs here")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    p.add_argument("--tracemalloc", action="store_true", help="M1: top allocation sites")
    p.add_argument("--quick", action="store_true", help="small N, 1 repeat (smoke test)")
    p.add_argument(
        "--observe",
        default="off",
        help=f"the engine's observers to compare, {','.join(OBSERVE)} (benchmarks/observing.py)",
    )
    args = p.parse_args(argv)
    try:
        args.workloads = _csv(args.workloads, WORKLOADS)
        args.backends = _csv(args.backends, BACKENDS)
        args.modes = _csv(args.modes, ALL_MODES)
        args.observe = _csv(args.observe, OBSERVE)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    quick = args.quick
    args.n = args.n or (300 if quick else 5000)
    args.timer_n = args.timer_n or (1000 if quick else 10_000)
    args.memory_n = args.memory_n or (10_000 if quick else 100_000)
    args.iterations = args.iterations or (30 if quick else 200)
    args.repeat = args.repeat or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (20 if quick else 50)
    return args


MODES = {
    "w1": ("load", "drain", "serial"),
    "w1sync": ("load", "drain"),
    "w1inline": ("load", "drain"),
    "c1": ("load", "serial"),
    "w2": ("load", "serial"),
}
ALL_MODES = ("load", "drain", "serial")
SQLITE_ONLY = {"c1"}  # a client in another process needs a broker processes share


def instances(args: argparse.Namespace, workload: str) -> int:
    """N of a workload: ``--timer-n`` for W4, ``--memory-n`` for M1, else ``-n``."""
    n: int = {"w4": args.timer_n, "m1": args.memory_n}.get(workload, args.n)
    return n


def plan(args: argparse.Namespace) -> list[Plan]:
    """Repeats interleaved (drift hits every configuration alike); baseline last, as it
    takes its batch size from the W1-sqlite runs."""
    out = []
    for r in range(1, args.repeat + 1):
        for workload in WORKLOADS[:-1]:
            if workload not in args.workloads:
                continue
            for backend in args.backends:
                if workload in SQLITE_ONLY and backend != "sqlite":
                    continue
                for observe in args.observe:
                    out += [
                        Plan(workload, mode, backend, r, observe)
                        for mode in MODES.get(workload, ("load",))
                        if workload not in MODES or mode in args.modes
                    ]
    if "baseline" in args.workloads:
        out += [Plan("baseline", "load", "sqlite", r) for r in range(1, args.repeat + 1)]
    return out


def _options(args: argparse.Namespace, step: Plan, units: list[report.Unit]) -> Options:
    profile = None
    if args.profile and step.mode in ("load", "drain") and step.workload in MODES.keys() | {"w3"}:
        os.makedirs(args.profile, exist_ok=True)
        name = f"{'-'.join(step.key)}-r{step.repeat}.prof"
        profile = os.path.abspath(os.path.join(args.profile, name))
    batch = args.baseline_batch
    if batch is None:
        w1 = next((u for u in units if u.name == "w1-load-sqlite" and u.ok), None)
        batch = round(w1.median("instance_rows_per_commit")) if w1 else 100
    return Options(
        workload=step.workload,
        mode=step.mode,
        backend=step.backend,
        n=instances(args, step.workload),
        iterations=args.iterations,
        chunk=args.chunk,
        rate=args.rate,
        warmup=args.warmup,
        batch=max(1, batch),
        producer=args.producer,
        profile=profile,
        timeout=args.timeout,
        tracemalloc=args.tracemalloc,
        observe=step.observe,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(width=max(console.width, 150))
    steps = plan(args)
    units: dict[tuple[str, str, str], report.Unit] = {}
    workdir = args.dir or tempfile.gettempdir()
    with report.progress_bar(console) as progress:
        task = progress.add_task("starting", total=len(steps))
        for step in steps:
            key = step.key
            unit = units.setdefault(key, report.Unit(*key, n=instances(args, step.workload)))
            progress.update(task, description=f"{unit.name} (repeat {step.repeat})")
            result = run_unit(_options(args, step, list(units.values())), workdir)
            unit.repeats.append(result)
            if "error" in result:
                console.print(f"[red]{unit.name} repeat {step.repeat} failed:[/] {result['error']}")
            progress.advance(task)
    meta: dict[str, Any] = {
        "machine": report.machine(),
        "filesystem": report.filesystem(workdir),
        "config": {
            k: v for k, v in vars(args).items() if k not in ("json",) and not k.startswith("_")
        },
    }
    ordered = list(units.values())
    report.print_report(console, ordered, meta)
    for note in NOTES:
        console.print(note, style="dim")
    if args.profile:
        for name in sorted(os.listdir(args.profile)):
            if name.endswith(".prof"):
                console.print(profiling.format_top(os.path.join(args.profile, name)), markup=False)
    if args.json:
        report.write_json(args.json, ordered, meta)
        console.print(f"results written to {args.json}")
    failed = sum(len(u.errors()) for u in ordered)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
