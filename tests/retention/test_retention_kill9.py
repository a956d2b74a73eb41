"""kill -9 of a real ``overture run --retention 0`` while its passes delete finished
instances: after each kill every instance is wholly there or wholly gone, in every table;
a restart finishes the work and deletes the rest."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import overture as ov

from ..engine_process import overture_run, stop
from .crash_app import Job

JOBS = 6000
KILLS = 4


def _engine(url: str, log: Path) -> subprocess.Popen[bytes]:
    return overture_run("tests.retention.crash_app:app", url, log, "--retention", "0")


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as c:
        return int(c.execute(sql).fetchone()[0])


def _deleted(db: Path) -> int:
    """Instances deleted so far: consumed triggers minus stored instances."""
    consumed = _count(db, "SELECT ifnull(sum(off), 0) FROM offsets")
    return consumed - _count(db, "SELECT count(*) FROM instances")


def _check_whole(db: Path) -> dict[str, int]:
    """Nothing of an instance without its row, and every row with its whole journal."""
    with sqlite3.connect(db, timeout=30) as c:
        for table in ("journal", "waits", "work", "inbox"):
            orphans = c.execute(
                f"SELECT count(*) FROM {table} WHERE instance_id IS NOT NULL "
                "AND instance_id NOT IN (SELECT id FROM instances)"
            ).fetchone()[0]
            assert orphans == 0, f"{orphans} {table} rows of deleted instances"
        orphan_tasks = c.execute(
            "SELECT count(*) FROM tasks WHERE NOT EXISTS (SELECT 1 FROM instances "
            "WHERE tasks.id LIKE 'task:' || instances.id || ':%')"
        ).fetchone()[0]
        assert orphan_tasks == 0
        short = c.execute(
            "SELECT count(*) FROM instances i WHERE i.journal_len != (SELECT "
            "ifnull(sum(json_array_length(j.entries)), 0) FROM journal j "
            "WHERE j.instance_id = i.id)"
        ).fetchone()[0]
        assert short == 0, f"{short} instances with a partial journal"
        return {
            "instances": c.execute("SELECT count(*) FROM instances").fetchone()[0],
            "journal": c.execute("SELECT count(*) FROM journal").fetchone()[0],
        }


def test_kill9_during_deletion_passes_leaves_no_half_deleted_instance(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    url = f"sqlite:///{db}"
    log = tmp_path / "engine.log"
    with ov.Client(url) as client:
        for start in range(0, JOBS, 500):
            client.send_many(client.envelope(Job(job=f"j{n}")) for n in range(start, start + 500))
    rng = random.Random(14)
    midway = 0  # kills that came while deletions were under way
    for _ in range(KILLS):
        engine = _engine(url, log)
        try:
            before = _deleted(db)
            deadline = time.monotonic() + 60
            # wait until this engine has deleted something, then kill it a moment later
            while _deleted(db) <= before and engine.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            engine.send_signal(signal.SIGKILL)
            engine.wait()
        _check_whole(db)
        done = _deleted(db)
        midway += 0 < done < JOBS
        if done == JOBS:
            break
    assert midway >= 2  # the kills did land in the middle of the work
    engine = _engine(url, log)  # the last one runs to the end
    try:
        deadline = time.monotonic() + 300
        while _deleted(db) < JOBS:
            assert engine.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (_deleted(db), log.read_text())
            time.sleep(0.1)
    finally:
        stop(engine, log, 60)
    assert _check_whole(db) == {"instances": 0, "journal": 0}
    assert _count(db, "SELECT count(*) FROM work") == 0
