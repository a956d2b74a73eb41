"""``overture run`` as a real subprocess, for the kill -9 tests: its stderr appended to a
log file (read back when an assertion fails), stdout dropped, this checkout importable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUNNING = b"running; Ctrl-C to stop"  # written once its signal handlers are installed

ROOT = Path(__file__).resolve().parents[1]


_offsets: dict[int, int] = {}
"""Where in its log each started engine's lines begin, by pid."""


def overture_run(app: str, url: str, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """Start ``overture run APP --backend URL --log-level WARNING OPTIONS...``."""
    offset = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "overture.cli", "run", app),
                *("--backend", url, "--log-level", "WARNING", *options),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    _offsets[proc.pid] = offset
    return proc


def stop(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> int:
    """SIGTERM ``proc`` once it is up (a SIGTERM during its start-up, before its handlers
    exist, would kill it with -15 instead of a drained stop); returns its exit code."""
    deadline = time.monotonic() + timeout
    while (
        proc.poll() is None
        and RUNNING not in log.read_bytes()[_offsets.get(proc.pid, 0) :]
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)
