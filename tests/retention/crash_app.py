"""The app of the retention crash test: a short process with a step and a sleep, so
that instances finish steadily while the engine deletes the finished ones."""

from __future__ import annotations

from datetime import timedelta

import overture as ov

app = ov.App("retain")


class Job(ov.Event, type="job.requested", key="job"):
    job: str


def work(job: str) -> str:
    return job.upper()


@app.process(trigger=Job, key="job")
async def job(ctx: ov.Context, event: Job) -> str:
    first = await ctx.step(work, event.job)
    await ctx.sleep(timedelta(milliseconds=1))
    return await ctx.step(work, first)
