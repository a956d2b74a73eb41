"""Run one measurement in a fresh Python subprocess, so that peak RSS (and any state an
engine leaves behind) belongs to that measurement alone.

Parent side: :func:`run_unit`. Child side: ``python -m benchmarks.runner OPTIONS_JSON OUT``
runs the measurement (``measure.measure``, ``scenarios.measure``,
``client_observed.measure`` or
``baseline.run_baseline``) and writes its result as JSON to ``OUT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import client_observed, scenarios, stats
from .baseline import run_baseline
from .measure import Options, Result, measure

REPO = Path(__file__).resolve().parent.parent


def run_unit(opts: Options, workdir: str | None = None) -> Result:
    """Run ``opts`` in a subprocess with a private temporary directory (for SQLite files,
    created under ``workdir``, default the system temp dir); returns its metrics, or
    ``{"error": ...}`` if it failed."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="overture-bench-") as tmp:
        opts = replace(opts, directory=tmp)
        out = os.path.join(tmp, "result.json")
        paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.runner", json.dumps(asdict(opts)), out],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=opts.timeout + 120,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {opts.timeout + 120:.0f}s"}
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}
        with open(out) as f:
            result: Result = json.load(f)
        result["wall_seconds"] = time.monotonic() - started
        return result


def _child(options_json: str, out: str) -> None:
    opts = Options(**json.loads(options_json))
    result: dict[str, Any]
    if opts.workload == "baseline":
        result = run_baseline(opts.directory, opts.n, opts.chunk, opts.batch)
        result["peak_rss_mb"] = stats.peak_rss_mb()
    else:
        run = scenarios.measure if opts.workload in scenarios.WORKLOADS else measure
        if opts.workload == "c1":
            run = client_observed.measure
        result = asyncio.run(run(opts))
        children = stats.peak_rss_mb(children=True)
        if children:
            result["producer_peak_rss_mb"] = children
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
