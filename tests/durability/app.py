"""The app the kill -9 tests run in real `overture run` subprocesses.

Every execution of a step or handler records one row in a separate SQLite file
(``OVERTURE_EFFECTS``), the way a real external service would see it (never rolled back):
its kind, job, idempotency key, attempt and a fresh token. A step returns its token, so
each committed result names the one execution whose outcome the engine kept; the others
are re-executions (allowed: steps are at least once), which the tests count and report.

Two processes per job: ``job`` runs steps, a durable sleep, a gather, and emits
``job.progress`` twice and ``job.done``; ``review`` (same key) waits for both progress
events in turn, so a re-delivered progress event fed to its second wait shows in its
result. The ``notify`` handler reacts to ``job.done``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import overture as ov

app = ov.App("durable")


def create_effects(path: Path) -> None:
    """The effects table (WAL: recording is cheap, like a real service)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE effects(kind TEXT, job TEXT, ikey TEXT, attempt INT, token TEXT)"
        )
    conn.close()


def read_effects(path: Path) -> list[tuple[str, str, str, int, str]]:
    """Every recorded execution: (kind, job, idempotency key, attempt, token)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT kind, job, ikey, attempt, token FROM effects").fetchall()
    finally:
        conn.close()


def record(kind: str, job: str) -> str:
    """Record one execution of a step or handler; returns its token."""
    info = ov.current_step()
    assert info is not None
    token = uuid.uuid4().hex
    conn = sqlite3.connect(os.environ["OVERTURE_EFFECTS"], timeout=30, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO effects VALUES (?, ?, ?, ?, ?)",
            (kind, job, info.idempotency_key, info.attempt, token),
        )
    finally:
        conn.close()
    return token


class JobRequested(ov.Event, type="job.requested", key="job"):
    job: str
    n: int


def work(kind: str, job: str, n: int) -> dict[str, object]:
    return {"n": n, "token": record(kind, job)}


@app.process(trigger=JobRequested, key="job")
async def job(ctx: ov.Context, request: JobRequested) -> dict[str, object]:
    a = await ctx.step(work, "a", request.job, request.n)
    await ctx.sleep(timedelta(milliseconds=20 + request.n % 50))
    b1, b2 = await ctx.gather(
        ctx.step(work, "b1", request.job, 1), ctx.step(work, "b2", request.job, 2)
    )
    ctx.emit("job.progress", {"job": request.job, "seq": 1})
    c = await ctx.step(work, "c", request.job, 3)
    ctx.emit("job.progress", {"job": request.job, "seq": 2})
    ctx.emit("job.done", {"job": request.job})
    steps = (a, b1, b2, c)
    return {
        "job": request.job,
        "total": sum(int(s["n"]) for s in steps),
        "tokens": [s["token"] for s in steps],
    }


@app.process(trigger=JobRequested, key="job")
async def review(ctx: ov.Context, request: JobRequested) -> dict[str, object]:
    seen = []
    for _ in range(2):
        progress = await ctx.wait_for("job.progress", timeout=timedelta(minutes=10))
        seen.append(progress.data["seq"])
    token = await ctx.step(record, "reviewed", request.job)
    return {"job": request.job, "seen": seen, "tokens": [token]}


@app.on("job.done")
def notify(event: ov.Event) -> None:
    record("notified", event.data["job"])
