"""The app the kill -9 tests run in a real `overture run` subprocess.

Steps and the handler record their effects in a separate SQLite file (``OVERTURE_EFFECTS``),
the way a real external service would see them: at least once, never rolled back.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta

import overture as ov

app = ov.App("durable")


def _record(kind: str, job: str) -> None:
    conn = sqlite3.connect(os.environ["OVERTURE_EFFECTS"], timeout=30, isolation_level=None)
    try:
        conn.execute("INSERT INTO effects VALUES (?, ?)", (kind, job))
    finally:
        conn.close()


class JobRequested(ov.Event, type="job.requested", key="job"):
    job: str
    n: int


def work(kind: str, job: str, n: int) -> int:
    _record(kind, job)
    return n


@app.process(trigger=JobRequested, key="job")
async def job(ctx: ov.Context, request: JobRequested) -> dict[str, object]:
    a = await ctx.step(work, "a", request.job, request.n)
    await ctx.sleep(timedelta(milliseconds=20 + request.n % 50))
    b1, b2 = await ctx.gather(
        ctx.step(work, "b1", request.job, 1), ctx.step(work, "b2", request.job, 2)
    )
    ctx.emit("job.progress", {"job": request.job})
    c = await ctx.step(work, "c", request.job, 3)
    ctx.emit("job.done", {"job": request.job})
    return {"job": request.job, "total": a + b1 + b2 + c}


@app.on("job.done")
def notify(event: ov.Event) -> None:
    _record("notified", event.data["job"])
