"""Aggregating repeats (median per metric) and rendering: rich tables and JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import overture

from . import stats

TITLES = {
    "w1": "W1 order process",
    "w1sync": "W1-sync (def steps)",
    "w1inline": "W1-inline (def, inline)",
    "c1": "W1 client-observed (100 in flight)",
    "w2": "W2 wait for event",
    "w3": "W3 fan-out (3 handlers+1)",
    "baseline": "raw sqlite3 (W1 rows)",
    "w4": "W4 timers",
    "m1": "M1 waiting instances",
}
UNITS = {
    "w1": "inst/s",
    "w1sync": "inst/s",
    "w1inline": "inst/s",
    "c1": "inst/s",
    "w2": "events/s",
    "w3": "events/s",
    "baseline": "inst/s",
}
RESOURCE_WORKLOADS = ("w4", "m1")  # their own table: lateness, CPU and memory


@dataclass(slots=True)
class Unit:
    """One measurement configuration and the results of its repeats."""

    workload: str
    mode: str
    backend: str
    n: int
    repeats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.workload}-{self.mode}-{self.backend}"

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.repeats if "error" not in r]

    def median(self, metric: str) -> float:
        return stats.median([r[metric] for r in self.ok if isinstance(r.get(metric), int | float)])

    def spread(self, metric: str) -> float:
        """Half the min-max range relative to the median (0.05 = ±5%)."""
        values = [float(r[metric]) for r in self.ok if isinstance(r.get(metric), int | float)]
        mid = stats.median(values)
        if len(values) < 2 or not mid:
            return math.nan
        return float((max(values) - min(values)) / 2 / mid)

    def medians(self) -> dict[str, Any]:
        keys = {k for r in self.ok for k, v in r.items() if isinstance(v, int | float)}
        out: dict[str, Any] = {k: self.median(k) for k in sorted(keys)}
        texts = {k: v for r in self.ok for k, v in r.items() if isinstance(v, str)}
        out.update(texts)
        return out

    def errors(self) -> list[str]:
        return [r["error"] for r in self.repeats if "error" in r]


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "sqlite": sqlite3.sqlite_version,
        "overture": overture.__version__,
        "revision": revision(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def revision() -> str:
    """The git commit of the checkout measured, ``+dirty`` if ``src/`` has local changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def filesystem(path: str) -> str:
    """The mount point and filesystem type holding ``path`` (Linux), for the notes."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype, *_ = line.split()
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(
                    mount
                ) >= len(best[1]):
                    best = (device, mount, fstype)
    except OSError:
        return "unknown"
    return f"{best[2]} on {best[0]} (mounted at {best[1]})"


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _short(durability: str) -> str:
    return durability.replace("journal_mode=", "").replace("synchronous=", "sync=")


def _find(units: list[Unit], workload: str, mode: str, backend: str) -> Unit | None:
    for unit in units:
        if (unit.workload, unit.mode, unit.backend) == (workload, mode, backend):
            return unit
    return None


def results_table(units: list[Unit], repeat: int) -> Table:
    table = Table(
        title=f"Overture benchmarks: median of {repeat} repeat(s); latencies in ms",
        caption="1x1 = one at a time (send, wait for completion, repeat)",
    )
    for header in ("Workload", "Backend", "Durability", "N"):
        table.add_column(header)
    for header in ("Throughput", "Engine-only", "p50", "p99", "1x1 p50", "1x1 p99", "RSS MB"):
        table.add_column(header, justify="right")
    pairs = sorted(
        {(u.workload, u.backend) for u in units if u.workload not in RESOURCE_WORKLOADS},
        key=lambda p: (list(TITLES).index(p[0]), p[1]),
    )
    for workload, backend in pairs:
        load = _find(units, workload, "load", backend)
        serial = _find(units, workload, "serial", backend)
        drain = _find(units, workload, "drain", backend)
        first = load or serial or drain
        assert first is not None
        med = first.medians()
        rss = [u.median("peak_rss_mb") for u in (load, serial, drain) if u is not None]
        throughput = "-"
        if load is not None and load.ok:
            spread = load.spread("throughput")
            throughput = f"{_num(load.median('throughput'))} {UNITS[workload]}"
            if not math.isnan(spread):
                throughput += f" (±{spread:.0%})"
        errors = [e for u in (load, serial, drain) if u is not None for e in u.errors()]
        engine_only = "-"
        if drain is not None and drain.ok:
            engine_only = f"{_num(drain.median('drain_throughput'))} {UNITS[workload]}"
        table.add_row(
            TITLES[workload],
            backend,
            _short(str(med.get("durability", "-")))
            if not errors
            else f"[red]{len(errors)} failed[/]",
            _num(first.n),
            throughput,
            engine_only,
            _num(load.median("p50_ms"), 1) if load else "-",
            _num(load.median("p99_ms"), 1) if load else "-",
            _num(serial.median("serial_p50_ms"), 2) if serial else "-",
            _num(serial.median("serial_p99_ms"), 2) if serial else "-",
            _num(max(rss), 0) if rss else "-",
        )
    return table


def resources_table(units: list[Unit], repeat: int) -> Table | None:
    """W4 (timer lateness, idle CPU) and M1 (memory of waiting instances)."""
    chosen = [u for u in units if u.workload in RESOURCE_WORKLOADS]
    if not chosen:
        return None
    table = Table(
        title=f"Timers and memory: median of {repeat} repeat(s); lateness in ms",
        caption="lateness = completion commit - due; idle CPU over 2 s with every timer "
        "stored and none due, % of one core",
    )
    for header in ("Workload", "Backend", "N"):
        table.add_column(header)
    for header in (
        "late p50",
        "late p99",
        "late max",
        "idle CPU",
        "starts/s",
        "RSS MB",
        "MB per 1k",
        "peak RSS MB",
    ):
        table.add_column(header, justify="right")
    for unit in sorted(chosen, key=lambda u: (list(TITLES).index(u.workload), u.backend)):
        if not unit.ok:
            table.add_row(
                TITLES[unit.workload],
                unit.backend,
                _num(unit.n),
                f"[red]{len(unit.errors())} failed[/]",
            )
            continue
        m = unit.medians()
        w4 = unit.workload == "w4"
        cpu = "-"
        if w4:
            cpu = f"{_num(m['idle_cpu_pct'], 2)}%"
            if min(r.get("idle_window_clean", 0) for r in unit.ok) < 1:
                cpu += " [red](timer due in window)[/]"
        table.add_row(
            TITLES[unit.workload],
            unit.backend,
            _num(unit.n),
            _num(m.get("late_p50_ms", math.nan), 1),
            _num(m.get("late_p99_ms", math.nan), 1),
            _num(m.get("late_max_ms", math.nan), 1),
            cpu,
            _num(m["start_rate"]),
            _num(m["rss_sleeping_mb"] if w4 else m["rss_mb"], 0),
            "-" if w4 else _num(m["rss_mb_per_1k_waiting"], 2),
            _num(m["peak_rss_mb"], 0),
        )
    return table


def details_table(units: list[Unit]) -> Table:
    table = Table(title="Details (medians)")
    table.add_column("Measurement")
    table.add_column("Values")
    for unit in units:
        if not unit.ok:
            table.add_row(unit.name, f"[red]failed:[/] {'; '.join(unit.errors())[:300]}")
            continue
        m = unit.medians()
        parts: list[str] = []
        if unit.workload == "baseline":
            parts += [
                f"{_num(m['rows_per_s'])} rows/s",
                f"{_num(m['commits_per_s'])} commits/s",
                f"{_num(m['batch'])} instances per state txn, {_num(m['chunk'])} log rows/txn",
                f"raw 4 KiB write+fsync {_num(m['fsync_per_s'])}/s",
                f"row bytes: log {_num(m['log_bytes_per_row'])}, "
                f"journal {_num(m['journal_bytes_per_row'])}",
            ]
        elif unit.workload == "w3":
            parts += [
                f"producer ({m.get('producer')}) {_num(m['producer_rate'])} ev/s",
                f"send_many p99 {_num(m['send_call_p99_ms'], 1)} ms",
                f"max {_num(m['max_ms'], 1)} ms",
                f"{_num(m['handler_runs_per_event'], 2)} handler runs/event",
                f"{_num(m['handler_rows_stored_pct'], 1)}% of events left a handler row "
                "stored past its first commit",
                f"{_num(m['instance_rows_per_commit'])} instances/commit",
                f"commit {_num(m['commit_ms_mean'], 1)} ms mean",
            ]
        elif unit.workload == "w4":
            parts += [
                f"hold {_num(m['hold_s'], 2)} s + sleep uniform[1,5)",
                f"starts {_num(m['start_rate'])} inst/s",
                f"timers fell due at {_num(m['timers_per_s'])}/s",
                f"lateness by `updated` p50 {_num(m['late_updated_p50_ms'], 1)} / "
                f"p99 {_num(m['late_updated_p99_ms'], 1)} ms",
                f"from send+sleep p50 {_num(m['late_from_send_p50_ms'], 1)} / "
                f"p99 {_num(m['late_from_send_p99_ms'], 1)} ms",
                f"{_num(m['early'])} early",
                f"due check max {_num(m['due_mismatch_max_ms'], 3)} ms",
                f"idle window: {_num(m['idle_batches'])} engine iterations, "
                f"first due {_num(m['idle_margin_s'], 1)} s after it",
            ]
        elif unit.workload == "m1":
            parts += [
                f"RSS {_num(m['rss_before_mb'])} -> {_num(m['rss_mb'])} MB",
                f"{_num(m['cached_instances'])} instances cached",
                f"{_num(m['commits'])} commits",
            ]
            if "db_mb" in m:
                parts.append(f"database {_num(m['db_mb'], 1)} MB")
            if "traced_kb_per_1k" in m:
                parts.append(
                    f"tracemalloc: {_num(m['traced_kb_per_1k'])} KiB per 1k traced "
                    "(start rate slowed by tracing)"
                )
        elif unit.workload == "c1" and unit.mode == "load":
            parts += [
                f"client process, {_num(m['concurrency'])} sends in flight",
                f"{_num(m['sends_per_append'], 1)} sends per client transaction",
            ]
        elif unit.mode == "load":
            parts += [
                f"producer ({m.get('producer')}) {_num(m['producer_rate'])} ev/s",
                f"send_many p99 {_num(m['send_call_p99_ms'], 1)} ms",
                f"{_num(m['instance_rows_per_commit'])} instances/commit",
                f"commit {_num(m['commit_ms_mean'], 1)} ms mean",
                f"by `updated`: {_num(m['throughput_updated'])}/s, "
                f"p50 {_num(m['p50_updated_ms'], 1)} / p99 {_num(m['p99_updated_ms'], 1)} ms",
            ]
            if "start_rate" in m:
                parts += [
                    f"starts {_num(m['start_rate'])} inst/s",
                    f"RSS +{_num(m['rss_mb_per_1k_waiting'], 1)} MB per 1k waiting",
                ]
        elif unit.mode == "drain":
            parts += [
                f"{_num(m['drain_instances_per_commit'])} instances/commit",
                f"commit {_num(m['drain_commit_ms_mean'], 1)} ms mean",
            ]
        else:
            parts += [
                f"{_num(m['iterations'])} iterations",
                f"max {_num(m['serial_max_ms'], 2)} ms",
            ]
        table.add_row(unit.name, "; ".join(parts))
    return table


def ratio_line(units: list[Unit]) -> str | None:
    w1 = _find(units, "w1", "load", "sqlite")
    base = _find(units, "baseline", "load", "sqlite")
    if w1 is None or base is None or not w1.ok or not base.ok:
        return None
    engine, raw = w1.median("throughput"), base.median("throughput")
    return (
        f"W1-sqlite reaches {engine / raw:.1%} of the raw SQLite baseline "
        f"({_num(engine)} vs {_num(raw)} instances/s)."
    )


def print_report(console: Console, units: list[Unit], meta: dict[str, Any]) -> None:
    m = meta["machine"]
    console.print(
        f"Machine: {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}, "
        f"SQLite {m['sqlite']}, overture {m['overture']} ({m['revision']}); SQLite files on "
        f"{meta['filesystem']}"
    )
    if any(u.workload not in RESOURCE_WORKLOADS for u in units):
        console.print(results_table(units, meta["config"]["repeat"]))
    resources = resources_table(units, meta["config"]["repeat"])
    if resources is not None:
        console.print(resources)
    console.print(details_table(units))
    for unit in units:
        for i, result in enumerate(unit.ok, 1):
            if "tracemalloc_top" in result:
                console.print(
                    f"{unit.name} repeat {i}: live allocations once all wait (tracemalloc), "
                    f"{result['traced_kb_per_1k']:,.0f} KiB per 1k instances in all",
                    markup=False,
                )
                for line in result["tracemalloc_files"] + [""] + result["tracemalloc_top"]:
                    console.print("  " + line, markup=False)
    line = ratio_line(units)
    if line:
        console.print(line)
    overhead = overhead_table(units)
    if overhead is not None:
        console.print(overhead)


def write_json(path: str, units: list[Unit], meta: dict[str, Any]) -> None:
    doc = {
        **meta,
        "results": [
            {
                "workload": u.workload,
                "mode": u.mode,
                "backend": u.backend,
                "n": u.n,
                "median": u.medians(),
                "repeats": u.repeats,
            }
            for u in units
        ],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def progress_bar(console: Console) -> Progress:
    """The progress bar every benchmark command shows while it runs (gone when done)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def overhead_table(units: list[Unit]) -> Table | None:
    """``--observe``: each observed unit's median throughput, CPU per instance and p50
    latency against the same measurement with the observer off (units whose backend is
    ``BACKEND+OBSERVE``). CPU (user + system of the engine's process over the timed phase,
    every thread) is steadier than throughput on a shared machine."""
    plain = {(u.workload, u.mode, u.backend): u for u in units if "+" not in u.backend}
    rows = []
    for unit in units:
        if "+" not in unit.backend:
            continue
        backend, observe = unit.backend.split("+", 1)
        off = plain.get((unit.workload, unit.mode, backend))
        if off is None or not off.ok or not unit.ok:
            continue
        on_m, off_m = _overhead_figures(unit.medians()), _overhead_figures(off.medians())
        if "throughput" not in on_m or "throughput" not in off_m:
            continue
        rows.append((unit, observe, on_m, off_m))
    if not rows:
        return None
    table = Table(title="Observer overhead (medians; ratio = with / off)")
    for header in ("Measurement", "Observer"):
        table.add_column(header)
    headers = (
        "off ev/s",
        "with ev/s",
        "throughput ratio",
        "off CPU µs/inst",
        "with CPU µs/inst",
        "CPU ratio",
        "off p50 ms",
        "with p50 ms",
    )
    for header in headers:
        table.add_column(header, justify="right")
    for unit, observe, on_m, off_m in rows:
        cpu_on, cpu_off = on_m.get("cpu_us", math.nan), off_m.get("cpu_us", math.nan)
        table.add_row(
            f"{unit.workload}-{unit.mode}-{unit.backend.split('+')[0]}",
            observe,
            _num(off_m["throughput"]),
            _num(on_m["throughput"]),
            _num(on_m["throughput"] / off_m["throughput"], 3),
            _num(cpu_off),
            _num(cpu_on),
            _num(cpu_on / cpu_off if cpu_off else math.nan, 3),
            _num(off_m.get("p50_ms", math.nan), 1),
            _num(on_m.get("p50_ms", math.nan), 1),
        )
    return table


def _overhead_figures(medians: dict[str, Any]) -> dict[str, Any]:
    """A drain's figures under the load's names (its throughput and CPU per instance)."""
    if "drain_throughput" in medians:
        return {
            "throughput": medians["drain_throughput"],
            "cpu_us": medians.get("drain_cpu_us", math.nan),
        }
    return medians
