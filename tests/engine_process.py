"""``overture run`` as a real subprocess, for the kill -9 tests: its stderr appended to a
log file (read back when an assertion fails), stdout dropped, this checkout importable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

RUNNING = b"running; Ctrl-C to stop"  # written once its signal handlers are installed

ROOT = Path(__file__).resolve().parents[1]


PACE = "OVERTURE_TEST_PACE"
"""Environment variable: seconds an app's callback sleeps per result (:func:`pace`), so a
crash test's kills land mid-stream however fast the machine (the engine would otherwise
finish between two of its reads)."""

_PACE_SECONDS = float(os.environ.get(PACE, "0"))  # read once, in the engine's process


def pace() -> None:
    """Sleep ``OVERTURE_TEST_PACE`` seconds (none unless the test that started this
    process set it)."""
    if _PACE_SECONDS:
        time.sleep(_PACE_SECONDS)


_offsets: dict[int, int] = {}
"""Where in its log each started engine's lines begin, by pid."""


def overture_run(
    app: str, url: str, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``overture run APP --backend URL --log-level WARNING OPTIONS...``, with ``env``
    added to this process's environment."""
    offset = log.stat().st_size if log.exists() else 0
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
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


def kill_while_producing(
    start: Callable[[], subprocess.Popen[bytes]],
    log: Path,
    produced: Callable[[], int],
    total: int,
    rng: random.Random,
    rounds: int = 4,
) -> tuple[int, int]:
    """Start an engine, kill -9 it ``rounds`` times at random moments while ``produced()``
    climbs toward ``total`` (restarting it after each kill), let the last one finish, then
    stop it. Returns (kills that landed mid-way, the last engine's exit code).

    A kill landed mid-way when, read after the engine is dead, ``0 < produced() < total``:
    read before the kill, the engine could finish in the moment between. An engine that is
    fast next to ``produced()`` (a query) finishes before the next round; such a test paces
    its app (``PACE``)."""
    kills = 0
    engine = start()
    try:
        for round_no in range(rounds):
            target = (round_no + 1) * total // (rounds + 2)
            deadline = time.monotonic() + 60
            while produced() < target and time.monotonic() < deadline:
                assert engine.poll() is None, log.read_text()[-3000:]
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))
            engine.send_signal(signal.SIGKILL)
            engine.wait(timeout=10)
            kills += 0 < produced() < total
            engine = start()
        deadline = time.monotonic() + 120
        while produced() < total and time.monotonic() < deadline:
            assert engine.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)  # anything extra (a duplicate) would land by now
    finally:
        code = stop(engine, log)
    return kills, code
