"""The app of the crash-point tests (``test_crash_points.py``).

Every step and handler execution records a row in a separate SQLite file
(``OVERTURE_EFFECTS``), as an external service would see it, with its idempotency key,
attempt and a fresh token; a step returns its token, so the journal names the one
execution whose outcome was committed. Each job waits twice for an approval: a re-delivered
approval fed to the second wait shows up in the result.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import timedelta

import overture as ov

app = ov.App("crashy")


class JobRequested(ov.Event, type="job.requested", key="job"):
    job: str


class JobApproved(ov.Event, type="job.approved", key="job"):
    job: str
    seq: int


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


def create_effects(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE effects(kind TEXT, job TEXT, ikey TEXT, attempt INT, token TEXT)"
        )
    conn.close()


@app.process(trigger=JobRequested, key="job")
async def job(ctx: ov.Context, request: JobRequested) -> dict[str, object]:
    a = await ctx.step(record, "a", request.job)
    await ctx.sleep(timedelta(milliseconds=10))
    first = await ctx.wait_for(JobApproved, timeout=timedelta(minutes=5))
    b = await ctx.step(record, "b", request.job)
    second = await ctx.wait_for(JobApproved, timeout=timedelta(minutes=5))
    ctx.emit("job.done", {"job": request.job})
    return {"job": request.job, "approvals": [first.seq, second.seq], "tokens": [a, b]}


@app.on("job.done")
def notify(event: ov.Event) -> None:
    record("notified", event.data["job"])
