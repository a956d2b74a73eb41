"""What the streams examples' tests share: event times on the harness's virtual clock,
the examples imported from the checkout, and their one-command demos run as the README
runs them (``python -m examples.NAME``: a real ``overture run`` on SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from examples.streamdemo import emitted

from ..conftest import REPO_ROOT

__all__ = ["T0", "at", "emitted", "run_demo", "settled"]

T = TypeVar("T")

T0 = 1_800_000_000.0
"""Where ``VirtualClock`` starts: event times are given relative to it."""


def at(seconds: float) -> datetime:
    """The event time ``seconds`` after the virtual clock's start."""
    return datetime.fromtimestamp(T0 + seconds, UTC)


def run_demo(module: str, db: Path) -> str:
    """``python -m examples.MODULE --db DB`` from the repository root; its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", f"examples.{module}", "--db", str(db)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def settled(read: Callable[[], T], timeout: float = 10.0) -> T:
    """``read()`` once it returns something truthy: on Kafka a client's view of the
    state follows the changelog, a moment behind the engine's commit."""
    deadline = time.monotonic() + timeout
    while not (value := read()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value
