"""``python -m benchmarks.peers``: W1 and W2 on peer engines, side by side with Overture.

Peers: Temporal (dev server on SQLite), DBOS Transact (PostgreSQL), Restate (single node),
Celery on Redis (W1 only, the plain task-queue baseline). Each peer runs in a fresh
``.venv-peers`` process per round (``benchmarks.peers._run``) that starts its servers on
127.0.0.1 under a temp dir and stops them by pid; the Overture column comes from our own
suite (``python -m benchmarks --workloads w1,w2 --backends sqlite``) run from the project
``.venv``. Rounds are interleaved (round 1 of every peer, then round 2, ...); the table
shows the median over rounds. Install first: ``bash benchmarks/peers/setup.sh``.
Not part of the test suite or CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _common

PEERS = ("overture", "temporal", "dbos", "restate", "celery")
# instances per load run (W1 and W2); Temporal's dev server does ~10-20 instances/s here
DEFAULT_N = {"overture": 2000, "temporal": 300, "dbos": 1000, "restate": 1000, "celery": 2000}
QUICK_N = {"overture": 300, "temporal": 60, "dbos": 200, "restate": 200, "celery": 300}
PROJECT_PYTHON = _common.ROOT / ".venv" / "bin" / "python"
METRICS = (
    ("w1", "throughput"),
    ("w1", "serial_p50_ms"),
    ("w1", "serial_p99_ms"),
    ("w2", "throughput"),
    ("w2", "serial_p50_ms"),
    ("w2", "serial_p99_ms"),
)
OVERTURE_TUNING = (
    "engine in the measuring process (asyncio task), Engine(app, backend, cache_size=10_000), "
    "batch size 500; producer in a separate process, send_many chunks of 100"
)
OVERTURE_DURABILITY = "SQLite WAL, synchronous=FULL (fsync at every commit)"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    p.add_argument("--peers", default=",".join(PEERS), help=",".join(PEERS))
    p.add_argument("--quick", action="store_true", help="small N, 20 iterations, 1 round")
    p.add_argument("--rounds", type=int, default=None, help="rounds per peer (2; quick 1)")
    p.add_argument("--iterations", type=int, default=None, help="1x1 rounds (100; quick 20)")
    p.add_argument(
        "-n",
        action="append",
        default=[],
        metavar="PEER=N",
        help="instances per load run for one peer, e.g. -n temporal=500 (repeatable)",
    )
    p.add_argument("--json", default=None, help="write rounds, medians and setup here")
    p.add_argument("--dir", default=None, help="parent of the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per peer round")
    args = p.parse_args(argv)
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    bad = [x for x in peers if x not in PEERS]
    if bad:
        p.error(f"unknown peers {bad}; choose from {','.join(PEERS)}")
    args.peers = peers
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.iterations = args.iterations or (20 if args.quick else 100)
    sizes = dict(QUICK_N if args.quick else DEFAULT_N)
    for item in args.n:
        name, _, value = item.partition("=")
        if name not in sizes or not value.isdigit():
            p.error(f"-n wants PEER=N, got {item!r}")
        sizes[name] = int(value)
    args.sizes = sizes
    return args


class Child:
    """The one subprocess running now, so a signal handler can stop it by its pid."""

    proc: subprocess.Popen[bytes] | None = None


def _run_child(cmd: list[str], timeout: float, log: Path) -> int:
    with open(log, "ab") as out:
        # same process group as us: a terminal Ctrl-C reaches the child too, and its
        # `finally` blocks stop the servers it started
        Child.proc = subprocess.Popen(cmd, cwd=_common.ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            return Child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _common.log(f"timeout after {timeout:.0f}s: stopping pid {Child.proc.pid}")
            Child.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                Child.proc.wait(60)
            return -1
        except BaseException:
            if Child.proc.poll() is None:
                Child.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    Child.proc.wait(60)
            raise
        finally:
            Child.proc = None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_peer(peer: str, args: argparse.Namespace, workdir: Path, rnd: int) -> dict[str, Any]:
    n = args.sizes[peer]
    out = workdir / f"{peer}-r{rnd}.json"
    log = workdir / f"{peer}-r{rnd}.log"
    wd = workdir / f"{peer}-r{rnd}"
    cmd = [
        str(_common.PEER_PYTHON),
        "-m",
        "benchmarks.peers._run",
        peer,
        "--out",
        str(out),
        "--workdir",
        str(wd),
        "-n",
        str(n),
        "--w2-n",
        str(n),
        "--iterations",
        str(args.iterations),
        "--warmup",
        "20",
    ]
    t0 = time.monotonic()
    code = _run_child(cmd, args.timeout, log)
    try:
        doc: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        doc = {"peer": peer, "error": f"exit {code}, no result; log tail:\n{_tail(log)}"}
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    doc["command"] = " ".join(cmd[:4]) + f" ... -n {n} --w2-n {n} --iterations {args.iterations}"
    if "error" in doc:
        doc["log_tail"] = _tail(log, 40)
    return doc


def run_overture(args: argparse.Namespace, workdir: Path, rnd: int) -> dict[str, Any]:
    n = args.sizes["overture"]
    out = workdir / f"overture-r{rnd}.json"
    log = workdir / f"overture-r{rnd}.log"
    cmd = [
        str(PROJECT_PYTHON),
        "-m",
        "benchmarks",
        "--workloads",
        "w1,c1,w2",
        "--backends",
        "sqlite",
        "-n",
        str(n),
        "--iterations",
        str(args.iterations),
        "--repeat",
        "1",
        "--dir",
        str(workdir),
        "--json",
        str(out),
    ]
    t0 = time.monotonic()
    code = _run_child(cmd, args.timeout, log)
    doc: dict[str, Any] = {"peer": "overture", "command": " ".join(cmd)}
    try:
        suite = json.loads(out.read_text())
    except (OSError, ValueError):
        doc["error"] = f"exit {code}, no result; log tail:\n{_tail(log, 40)}"
        return doc
    found = {(r["workload"], r["mode"]): r["median"] for r in suite["results"]}

    def get(workload: str, mode: str, key: str) -> Any:
        return found.get((workload, mode), {}).get(key)

    doc.update(
        versions={
            "overture": suite["machine"].get("overture"),
            "sqlite": suite["machine"]["sqlite"],
        },
        tuning=OVERTURE_TUNING,
        durability=OVERTURE_DURABILITY,
        # W1 as the peers are measured: one send per instance from a client process,
        # completion observed by that client (C1); the engine-internal figures beside it
        w1={
            "n": n,
            "throughput": get("c1", "load", "throughput"),
            "serial_p50_ms": get("c1", "serial", "serial_p50_ms"),
            "serial_p99_ms": get("c1", "serial", "serial_p99_ms"),
            "engine_internal_throughput": get("w1", "load", "throughput"),
            "engine_only_throughput": get("w1", "drain", "drain_throughput"),
            "engine_internal_serial_p50_ms": get("w1", "serial", "serial_p50_ms"),
            "iterations": args.iterations,
        },
        w2={
            "n": n,
            "throughput": get("w2", "load", "throughput"),
            "serial_p50_ms": get("w2", "serial", "serial_p50_ms"),
            "serial_p99_ms": get("w2", "serial", "serial_p99_ms"),
            "iterations": args.iterations,
        },
        wall_s=round(time.monotonic() - t0, 1),
    )
    errors = [r["repeats"][0].get("error") for r in suite["results"] if r["repeats"]]
    if any(errors):
        doc["error"] = "; ".join(e for e in errors if e)
    return doc


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload, metric in METRICS:
        values = [
            r[workload][metric]
            for r in rounds
            if isinstance(r.get(workload), dict)
            and isinstance(r[workload].get(metric), int | float)
        ]
        if values:
            out.setdefault(workload, {})[metric] = statistics.median(values)
            out[workload][f"{metric}_rounds"] = values
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:,.1f}x"


def table(results: dict[str, dict[str, Any]], sizes: dict[str, int], iterations: int) -> str:
    """A markdown table: medians, plus Overture's advantage on each metric
    (throughput: Overture / peer; latency: peer / Overture; >1 means Overture is better)."""
    ov = results.get("overture", {}).get("median", {})
    head = (
        "| engine | N (load) | W1 inst/s | vs Ov | W1 1x1 p50 ms | W1 1x1 p99 ms | vs Ov (p50) "
        "| W2 events/s | vs Ov | W2 1x1 p50 ms | vs Ov (p50) | rounds |"
    )
    lines = [head, "|" + "|".join(["---"] * 12) + "|"]
    for peer, res in results.items():
        med = res.get("median", {})
        w1, w2 = med.get("w1", {}), med.get("w2", {})
        ow1, ow2 = ov.get("w1", {}), ov.get("w2", {})
        is_ov = peer == "overture"
        rounds = f"{res.get('ok_rounds', 0)}/{res.get('rounds', 0)}"
        lines.append(
            "| "
            + " | ".join(
                [
                    peer,
                    str(sizes.get(peer, "-")),
                    _fmt(w1.get("throughput")),
                    "1.0x" if is_ov else _ratio(ow1.get("throughput"), w1.get("throughput")),
                    _fmt(w1.get("serial_p50_ms"), 1),
                    _fmt(w1.get("serial_p99_ms"), 1),
                    "1.0x" if is_ov else _ratio(w1.get("serial_p50_ms"), ow1.get("serial_p50_ms")),
                    _fmt(w2.get("throughput")),
                    "1.0x" if is_ov else _ratio(ow2.get("throughput"), w2.get("throughput")),
                    _fmt(w2.get("serial_p50_ms"), 1),
                    "1.0x" if is_ov else _ratio(w2.get("serial_p50_ms"), ow2.get("serial_p50_ms")),
                    rounds,
                ]
            )
            + " |"
        )
    lines.append(
        f"\nvs Ov = Overture's advantage: throughput Overture/peer, latency peer/Overture "
        f"(>1x: Overture better). 1x1 = one at a time, {iterations} iterations. "
        "W2 load N = W1 load N."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _common.install_signal_handlers()
    needs_peer_venv = any(p != "overture" for p in args.peers)
    if needs_peer_venv and not _common.PEER_PYTHON.exists():
        print("no .venv-peers: run `bash benchmarks/peers/setup.sh` first", file=sys.stderr)
        return 2
    if "overture" in args.peers and not PROJECT_PYTHON.exists():
        print("no .venv: run `scripts/bootstrap` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="overture-peers-", dir=args.dir))
    os.chmod(workdir, 0o711)  # postgres (another user) must reach its data dir below it
    _common.log(f"work dir {workdir}; peers {args.peers}; rounds {args.rounds}; N {args.sizes}")
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.peers}
    code = 0
    try:
        for rnd in range(1, args.rounds + 1):
            for peer in args.peers:
                _common.log(f"round {rnd}/{args.rounds}: {peer} (N={args.sizes[peer]})")
                if peer == "overture":
                    doc = run_overture(args, workdir, rnd)
                else:
                    doc = run_peer(peer, args, workdir, rnd)
                runs[peer].append(doc)
                if "error" in doc:
                    code = 1
                    _common.log(f"{peer} round {rnd} failed: {doc['error']}")
                else:
                    _common.log(
                        f"{peer} round {rnd}: "
                        + ", ".join(
                            f"{w} {k}={_fmt(doc[w].get(k), 1)}"
                            for w, k in METRICS
                            if isinstance(doc.get(w), dict) and k in doc[w]
                        )
                        + f" ({doc.get('wall_s')} s)"
                    )
    except KeyboardInterrupt:
        _common.log("interrupted: partial results follow")
        code = 130
    finally:
        if args.keep:
            _common.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, dict[str, Any]] = {}
    for peer, docs in runs.items():
        ok = [d for d in docs if "error" not in d]
        last = (ok or docs or [{}])[-1]
        results[peer] = {
            "median": medians(ok),
            "rounds": len(docs),
            "ok_rounds": len(ok),
            "versions": last.get("versions"),
            "tuning": last.get("tuning"),
            "durability": last.get("durability"),
            "errors": [d["error"] for d in docs if "error" in d],
            "runs": docs,
        }
    print(table(results, args.sizes, args.iterations))
    print()
    for peer, res in results.items():
        print(f"- {peer}: {res['versions']}\n  durability: {res['durability']}")
        print(f"  tuning: {res['tuning']}")
        for err in res["errors"]:
            print(f"  ERROR: {err}")
    if args.json:
        doc = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            },
            "config": {
                "peers": args.peers,
                "rounds": args.rounds,
                "iterations": args.iterations,
                "sizes": args.sizes,
                "quick": args.quick,
            },
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"results written to {args.json}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
