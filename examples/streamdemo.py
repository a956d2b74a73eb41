"""The one-command demos of the streams examples (``python -m examples.coldchain`` and
its siblings): a real ``overture run`` engine on an embedded SQLite file, a scenario sent
to it with a :class:`~overture.Client`, and the outcome read back once it is there.

The scenario's events carry event times in the recent past (the last minutes of a
trip, a trading session, a shopping visit), so the windows close and the absence patterns
fire within seconds of wall-clock time: the newest events move the partition's
watermark, and once they stop, the idle-partition rule (``docs/streams.md``) moves it by
the engine's clock.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import overture as ov

ROOT = Path(__file__).resolve().parents[1]
READY = b"running; Ctrl-C to stop"
"""What ``overture run`` writes once its signal handlers are installed."""


def ago(seconds: float, now: datetime | None = None) -> datetime:
    """The time ``seconds`` before ``now`` (default: the wall clock), UTC."""
    return (now or datetime.now(UTC)) - timedelta(seconds=seconds)


def parse_args(description: str, argv: list[str] | None) -> Path:
    """The demo's ``--db`` (default: a fresh file in a temporary folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--db", type=Path, default=None, help="the SQLite file (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    db: Path = args.db or Path(tempfile.mkdtemp(prefix="overture-demo-")) / "demo.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return db.resolve()


def run(
    app_ref: str,
    app: ov.App,
    db: Path,
    scenario: Callable[[ov.Client], None],
    done: Callable[[ov.Client], bool],
    *,
    timeout: float = 60.0,
) -> None:
    """Start ``overture run APP_REF`` on ``db``, send the scenario, wait until ``done``,
    then stop the engine (SIGTERM: it drains).

    Raises:
        RuntimeError: the engine exited, or ``done`` did not hold within ``timeout``
            (the engine's log is in the message).
    """
    url = f"sqlite:///{db}"
    log = db.with_suffix(".engine.log")
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with log.open("wb") as stderr:
        engine = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", "run", app_ref, "--backend", url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait(lambda: READY in log.read_bytes(), engine, log, timeout, "the engine to start")
        with ov.Client(url, app=app) as client:
            scenario(client)
            _wait(lambda: done(client), engine, log, timeout, "the outcome")
    finally:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)


def _wait(
    condition: Callable[[], bool],
    engine: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
    what: str,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if engine.poll() is not None:
            raise RuntimeError(f"the engine exited ({engine.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; engine log:\n{log.read_text()}")
        time.sleep(0.1)


def emitted(client: ov.Client, event: type[ov.Event]) -> list[ov.Event]:
    """The events of that contract in the log, in log order, typed."""
    return [
        event.from_envelope(e.envelope)
        for e in client.events(type=event.event_type)
        if e.envelope is not None
    ]


def wait_for(
    client: ov.Client, condition: Callable[[ov.Client], bool], timeout: float = 30
) -> None:
    """Poll ``condition(client)`` until it holds.

    Raises:
        RuntimeError: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition(client):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {condition.__name__}")
        time.sleep(0.1)
