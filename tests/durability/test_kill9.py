"""kill -9 of a real `overture run` process, repeatedly, mid-run; then check everything.

Every instance must complete with the right result, every emitted event must exist
exactly once, nothing may be stuck or dead-lettered, and every step and handler effect
must have happened (at least once, as documented).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import overture as ov

from .app import JobRequested

JOBS = 1000
ROOT = Path(__file__).resolve().parents[2]


def start_engine(url: str, effects: Path, log: Path, cache_size: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OVERTURE_EFFECTS": str(effects),
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
    }
    with log.open("ab") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "overture.cli", "run", "tests.durability.app:app"),
                *("--broker", url, "--cache-size", str(cache_size), "--log-level", "WARNING"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def completed(client: ov.Client) -> int:
    return len(client.instances(status="completed", limit=10 * JOBS))


@pytest.mark.timeout(300)
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    effects = tmp_path / "effects.db"
    log = tmp_path / "engine.log"
    rng = random.Random(1234)
    with sqlite3.connect(effects) as conn:  # WAL: effects are cheap to record, like a real service
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE effects(kind TEXT, job TEXT)")
    with ov.Client(url) as client:
        check(client, url, effects, log, rng)


def check(client: ov.Client, url: str, effects: Path, log: Path, rng: random.Random) -> None:
    client.send_many(client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(JOBS // 2))

    kills_mid_run = 0
    engine = start_engine(url, effects, log, cache_size=10_000)
    try:
        for round_no in range(4):
            if round_no == 1:  # the rest arrives while the engine is being killed
                client.send_many(
                    client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(JOBS // 2, JOBS)
                )
            # kill once progress is under way, at a random moment after that
            target = (round_no + 1) * JOBS // 6
            deadline = time.monotonic() + 60
            while completed(client) < target and time.monotonic() < deadline:
                assert engine.poll() is None, log.read_text()[-3000:]
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            done = completed(client)
            engine.send_signal(signal.SIGKILL)
            engine.wait(timeout=10)
            if 0 < done < JOBS:
                kills_mid_run += 1
            # alternate the cache: with 0, every input replays the instance's journal
            engine = start_engine(url, effects, log, cache_size=0 if round_no % 2 else 10_000)

        deadline = time.monotonic() + 180
        while completed(client) < JOBS and time.monotonic() < deadline:
            assert engine.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        # let handlers triggered by the last events finish
        time.sleep(1.0)
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    assert kills_mid_run >= 3, f"only {kills_mid_run} kills landed mid-run"

    assert_all_done(client, effects)


def assert_all_done(client: ov.Client, effects: Path) -> None:
    """Every job completed with the right result, each emitted event exists exactly once,
    nothing was dead-lettered, and every step and handler effect happened."""
    instances = client.instances(limit=10 * JOBS)
    assert len(instances) == JOBS
    assert Counter(i.status for i in instances) == {"completed": JOBS}
    for instance in instances:
        n = int(instance.key[1:])
        assert instance.result == {"job": instance.key, "total": n + 6}

    emitted = Counter(
        (e.envelope.type, e.envelope.data["job"])
        for e in client.events(limit=10 * JOBS)
        if e.envelope is not None and e.envelope.type in ("job.progress", "job.done")
    )
    assert len(emitted) == 2 * JOBS
    assert set(emitted.values()) == {1}, "an emitted event was duplicated"
    assert client.dead_letters() == []

    conn = sqlite3.connect(effects)
    rows = Counter(conn.execute("SELECT kind, job FROM effects").fetchall())
    conn.close()
    for i in range(JOBS):
        for kind in ("a", "b1", "b2", "c", "notified"):
            assert rows[(kind, f"j{i}")] >= 1, f"{kind} never ran for j{i}"
