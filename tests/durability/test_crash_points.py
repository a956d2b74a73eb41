"""Crash-point injection: the engine process exits after each statement of one commit.

For N = 1, 2, ... an ``overture run`` subprocess (``crashpoint.py``) exits with
``os._exit`` when the N-th SQL statement of a chosen commit is about to start, until N is
past the commit's last statement; each time a fresh engine then finishes the work on the
same database, and everything is checked: each instance completed as it should, each wait
got its own event once, each emitted event exists once, the dead letter exists once, no
wait, work or buffered event is left over, and every step and handler ran at least once
(re-executions, allowed after a crash, are counted and reported).

The three SQLite commit paths are covered: the one-statement JSON document
(``document``); the document and the rest of the batch, a dead letter, in one explicit
transaction (``extras``); row by row, for a batch the document cannot carry: a NUL in a
string (``rows``). Two commits are targeted: the one that
consumes the triggers, and the one that consumes the first approval while each instance
waits for it (so a re-delivered approval would reach the second wait).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import overture as ov
from overture.events import encode
from overture.ports import NewRecord
from overture.runtime.clock import SystemClock
from overture.testing import Harness

from . import crash_app
from .crashpoint import CRASHED, PAST_END

JOBS = 2
ROOT = Path(__file__).resolve().parents[2]
TARGET_COMMIT = {"triggers": 1, "approval": 2}
"""Which commit carrying consumed offsets the crash hits."""


NUL = "\x00"
"""In an event's field, keeps its batch off the JSON document (the row-by-row path)."""


def _append(client: ov.Client, events: list[ov.Event], *, bad: bool) -> None:
    """One atomic append, so the engine reads it in one batch; ``bad`` adds a record
    that cannot be decoded (a dead letter: the batch commits the document and the
    dead letter in one explicit transaction)."""
    records = [
        NewRecord(e.envelope.partitionkey, encode(e.envelope), e.envelope.id, e.envelope.type)
        for e in events
    ]
    if bad:
        records.append(NewRecord(events[0].envelope.partitionkey, b"\xff not an event"))
    client.backend.log.append(records)


def _approvals(seq: int, note: str = "") -> list[ov.Event]:
    return [crash_app.JobApproved(job=f"j{i}", seq=seq, note=note) for i in range(JOBS)]


def _waits(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(
            conn.execute("SELECT count(*) FROM waits WHERE etype = 'job.approved'").fetchone()[0]
        )
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        conn.close()


def _crash_once(work: Path, target: str, path: str, statement: int) -> int:
    """Run the work up to the crash point; returns the driver's exit code."""
    db, effects, log = work / "engine.db", work / "effects.db", work / "engine.log"
    url = f"sqlite:///{db}"
    crash_app.create_effects(effects)
    with ov.Client(url, app=crash_app.app) as client:
        note = NUL if path == "rows" else ""
        triggers = [
            crash_app.JobRequested(job=f"j{i}", note=note if target == "triggers" else "")
            for i in range(JOBS)
        ]
        _append(client, triggers, bad=path == "extras" and target == "triggers")
        # the package of this checkout first (scripts/mutants runs a scratch copy)
        path_ = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        env = {**os.environ, "OVERTURE_EFFECTS": str(effects), "PYTHONPATH": path_}
        with log.open("ab") as stderr:
            driver = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.durability.crashpoint"),
                    *(str(TARGET_COMMIT[target]), str(statement), "--"),
                    *("run", "tests.durability.crash_app:app", "--backend", url),
                    # no retention passes: the input alone picks the commit path (the
                    # first batch would carry a pass, putting it on the extras path)
                    *("--log-level", "WARNING", "--retention", "forever"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            if target == "approval":  # once every instance waits for its first approval
                deadline = time.monotonic() + 60
                while _waits(db) < JOBS:
                    assert driver.poll() is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, "the instances never waited"
                    time.sleep(0.02)
                _append(client, _approvals(1, note), bad=path == "extras")
            code = driver.wait(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert code in (CRASHED, PAST_END), f"exit {code}: {log.read_text()[-3000:]}"
        # what the crashed run did not get to see yet
        _append(
            client,
            _approvals(1) + _approvals(2) if target == "triggers" else _approvals(2),
            bad=False,
        )
    return code


async def _finish_and_check(work: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """A fresh engine finishes the work; check everything. Returns the re-executions."""
    db, effects = work / "engine.db", work / "effects.db"
    monkeypatch.setenv("OVERTURE_EFFECTS", str(effects))
    async with Harness(crash_app.app, f"sqlite:///{db}", clock=SystemClock()) as h:
        deadline = time.monotonic() + 60
        while True:
            await h.idle()
            done = len(h.client.instances(status="completed"))
            with sqlite3.connect(effects) as conn:
                notified = conn.execute(
                    "SELECT count(DISTINCT job) FROM effects WHERE kind = 'notified'"
                ).fetchone()[0]
            conn.close()
            if done == JOBS and notified == JOBS and not h.backend.store.work():
                break
            assert time.monotonic() < deadline, f"{done} completed, {notified} notified"
            await asyncio.sleep(0.01)
        instances = h.client.instances()
        events = Counter(
            (e.envelope.type, e.envelope.data["job"])
            for e in h.client.events(type="job.done")
            if e.envelope is not None
        )
        letters = h.client.dead_letters()
        leftovers = (h.backend.store.waits(), h.backend.store.work())
    conn = sqlite3.connect(db)
    inbox = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    conn.close()
    conn = sqlite3.connect(effects)
    rows = conn.execute("SELECT kind, job, ikey, attempt, token FROM effects").fetchall()
    conn.close()

    assert sorted((i.status, i.key) for i in instances) == [
        ("completed", f"j{n}") for n in range(JOBS)
    ]
    tokens = {token for *_, token in rows}
    for instance in instances:
        result = instance.result
        assert result["approvals"] == [1, 2], "an approval was delivered twice or lost"
        # the committed outcome of each step is one of its recorded executions
        assert set(result["tokens"]) <= tokens
    assert events == {("job.done", f"j{n}"): 1 for n in range(JOBS)}
    assert len(letters) == (1 if path == "extras" else 0)
    assert leftovers == ([], []) and inbox == 0
    executions = Counter((kind, job) for kind, job, *_ in rows)
    assert set(executions) == {(k, f"j{n}") for k in ("a", "b", "notified") for n in range(JOBS)}
    keys = {
        (kind, job): {ikey for k, j, ikey, *_ in rows if (k, j) == (kind, job)}
        for kind, job in executions
    }
    assert all(len(k) == 1 for k in keys.values()), f"idempotency keys changed: {keys}"
    return sum(executions.values()) - len(executions)


@pytest.mark.parametrize("path", ["document", "extras", "rows"])
@pytest.mark.parametrize("target", ["triggers", "approval"])
@pytest.mark.timeout(600)
async def test_a_crash_after_any_statement_of_a_commit_loses_and_duplicates_nothing(
    target: str, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = []
    for statement in itertools.count(1):
        work = tmp_path / f"s{statement}"
        work.mkdir()
        code = _crash_once(work, target, path, statement)
        reexecuted = await _finish_and_check(work, path, monkeypatch)
        report.append(f"{statement}:{'crash' if code == CRASHED else 'after'}+{reexecuted}")
        if code == PAST_END:
            assert f"path={path}" in (work / "engine.log").read_text(), "another commit path"
            break
        assert statement < 500, "the commit never ended"
    # "N:crash+R": exited before statement N, R step/handler re-executions afterwards
    print(f"{target}/{path}: " + " ".join(report))
    minimum = 2 if path == "document" else 6
    assert len(report) > minimum, f"only {len(report)} crash points: {report}"
