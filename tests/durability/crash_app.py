"""The app of the crash-point tests (``test_crash_points.py``).

Every step and handler execution records a row in a separate SQLite file
(``OVERTURE_EFFECTS``), as an external service would see it, with its idempotency key,
attempt and a fresh token; a step returns its token, so the journal names the one
execution whose outcome was committed. Each job waits twice for an approval: a re-delivered
approval fed to the second wait shows up in the result.
"""

from __future__ import annotations

from datetime import timedelta

import overture as ov

from .app import create_effects as create_effects
from .app import record

app = ov.App("crashy")


class JobRequested(ov.Event, type="job.requested", key="job"):
    job: str
    note: str = ""  # a NUL here puts the commit on the row-by-row path


class JobApproved(ov.Event, type="job.approved", key="job"):
    job: str
    seq: int
    note: str = ""


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
