"""Sync steps: bounded by their timeout, a configurable pool, inline steps, and the
watchdog that names an async step blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta

import pytest

import overture as ov
from overture.backends import open_backend
from overture.runtime.engine import Engine
from overture.testing import Harness

from ..conftest import Factory


class Job(ov.Event, type="job.queued", key="job_id"):
    job_id: str
    hang: bool = False


def starving_app(release: threading.Event, ran: list[str]) -> ov.App:
    app = ov.App("pool")

    def hang(job_id: str) -> str:  # a call to a service that never answers
        release.wait(30)
        return "late"

    def work(job_id: str) -> str:
        ran.append(job_id)
        return f"done-{job_id}"

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> str:
        if job.hang:
            try:
                await ctx.step(
                    hang, job.job_id, timeout=timedelta(seconds=0.2), retry=ov.Retry(max_attempts=1)
                )
            except ov.StepFailed as failure:
                return f"gave up: {failure}"
        result: str = await ctx.step(work, job.job_id)
        return result

    return app


async def test_steps_past_their_timeout_do_not_starve_the_pool(
    harness: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two threads, two steps that never return: the other sync steps still run, the
    stuck attempts fail with a timeout, and the stall is logged with the step's name."""
    caplog.set_level(logging.WARNING, logger="overture.engine")
    release = threading.Event()
    ran: list[str] = []
    try:
        async with harness(starving_app(release, ran), threads=2) as h:
            h.client.send(Job(job_id="stuck-1", hang=True))
            h.client.send(Job(job_id="stuck-2", hang=True))
            for i in range(5):
                h.client.send(Job(job_id=f"j{i}"))
            await asyncio.wait_for(h.idle(), 20)
            by_key = {i.key: i for i in h.client.instances()}
            assert len(by_key) == 7
            for i in range(5):
                assert by_key[f"j{i}"].status == "completed"
                assert by_key[f"j{i}"].result == f"done-j{i}"
            for key in ("stuck-1", "stuck-2"):
                assert by_key[key].status == "completed"
                assert "timed out after 0.2s" in str(by_key[key].result)
            assert sorted(ran) == [f"j{i}" for i in range(5)]
    finally:
        release.set()
    stalls = [r.getMessage() for r in caplog.records if "overran its timeout" in r.getMessage()]
    assert len(stalls) == 2
    assert all("'starving_app.<locals>.hang'" in line for line in stalls), stalls


async def test_the_pool_size_bounds_how_many_sync_steps_run_at_once() -> None:
    app = ov.App("bounded")
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def slow(job_id: str) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> None:
        await ctx.step(slow, job.job_id)

    async with Harness(app, threads=3) as h:
        assert h.engine.executor.threads == 3
        h.client.send_many([h.client.envelope(Job(job_id=f"j{i}")) for i in range(12)])
        await asyncio.wait_for(h.idle(), 20)
        assert {i.status for i in h.client.instances()} == {"completed"}
    assert peak[0] == 3


async def test_blocking_sync_steps_run_as_many_at_once_as_the_pool_has_threads() -> None:
    """The pool starts with one thread and grows only when its threads are blocked:
    steps doing 10 ms of I/O still reach the default 16 at once."""
    app = ov.App("blocking-io")
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def io(job_id: str) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> None:
        await ctx.step(io, job.job_id)
        await ctx.step(io, job.job_id)

    async with Harness(app) as h:
        assert h.engine.executor.threads == 16
        h.client.send_many([h.client.envelope(Job(job_id=f"j{i}")) for i in range(96)])
        await asyncio.wait_for(h.idle(), 20)
        assert {i.status for i in h.client.instances()} == {"completed"}
    assert peak[0] == 16


async def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ov.ConfigError, match="at least one thread"):
        Engine(ov.App("none"), open_backend("memory://no-threads"), threads=0)


async def test_inline_steps_run_on_the_engine_thread_and_are_durable(harness: Factory) -> None:
    """Inline sync steps run on the engine's thread, once each, and replay from the
    journal (the backend fixture includes cache_size=0, a replay on every input)."""
    app = ov.App("inline")
    calls: list[tuple[str, int]] = []

    def price(job_id: str) -> int:
        calls.append((job_id, threading.get_ident()))
        return len(job_id)

    class Go(ov.Event, type="job.go", key="job_id"):
        job_id: str

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> int:
        first: int = await ctx.step(price, job.job_id, inline=True)
        await ctx.wait_for(Go)
        second: int = await ctx.step(price, job.job_id + "x", inline=True)
        return first + second

    async with harness(app) as h:
        h.client.send(Job(job_id="abc"))
        await h.idle()
        await h.restart()
        h.client.send(Go(job_id="abc"))
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "completed"
        assert instance.result == 7
    assert [c[0] for c in calls] == ["abc", "abcx"]  # never re-run by a replay
    assert {c[1] for c in calls} == {threading.get_ident()}  # the engine's (test's) thread


async def test_an_async_step_blocking_the_loop_is_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="overture.engine")
    app = ov.App("blocking")

    async def crunch(job_id: str) -> str:
        await asyncio.sleep(0)
        time.sleep(1.6)  # noqa: ASYNC251 (the bug under test: a blocking call stalls the loop)
        return job_id

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> str:
        result: str = await ctx.step(crunch, job.job_id)
        return result

    async with Harness(app) as h:
        h.client.send(Job(job_id="j1"))
        await asyncio.wait_for(h.idle(), 20)
        assert h.client.instances()[0].status == "completed"
    lines = [
        r.getMessage()
        for r in caplog.records
        if "blocked the engine's event loop" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert "step 'test_an_async_step_blocking_the_loop_is_named.<locals>.crunch'" in lines[0]


async def test_a_sync_step_timeout_counts_from_when_it_starts_running() -> None:
    """One thread, busy for 0.6 s: a step queued behind it with a 0.3 s timeout waits
    longer than its timeout for the thread, then runs in 0.05 s. Its time limit is for
    running, not for waiting in the pool's queue, so it succeeds (and runs once)."""
    app = ov.App("queued")
    ran: list[str] = []

    def busy(job_id: str) -> None:
        time.sleep(0.6)

    def quick(job_id: str) -> None:
        time.sleep(0.05)
        ran.append(job_id)

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> str:
        if not job.hang:
            await ctx.step(busy, job.job_id)
            return "busy"
        try:
            await ctx.step(
                quick, job.job_id, timeout=timedelta(seconds=0.3), retry=ov.Retry(max_attempts=1)
            )
        except ov.StepFailed as failure:
            return f"gave up: {failure}"
        return "ran"

    async with Harness(app, threads=1) as h:
        h.client.send(Job(job_id="first"))
        await asyncio.sleep(0.1)  # its step holds the only thread
        h.client.send(Job(job_id="queued", hang=True))
        await asyncio.wait_for(h.idle(), 20)
        by_key = {i.key: i for i in h.client.instances()}
        assert by_key["queued"].result == "ran"
    assert ran == ["queued"]


async def test_a_sync_step_overrunning_after_a_wait_in_the_queue_is_abandoned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same queue, but the queued step itself runs past its 0.3 s limit: it is
    abandoned 0.3 s after it started (not earlier, not never)."""
    caplog.set_level(logging.WARNING, logger="overture.engine")
    app = ov.App("queued-slow")
    release = threading.Event()
    started: list[float] = []
    failed: list[float] = []

    def busy(job_id: str) -> None:
        time.sleep(0.5)

    def hang(job_id: str) -> None:
        started.append(time.monotonic())
        release.wait(10)

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> str:
        if not job.hang:
            await ctx.step(busy, job.job_id)
            return "busy"
        try:
            await ctx.step(
                hang, job.job_id, timeout=timedelta(seconds=0.3), retry=ov.Retry(max_attempts=1)
            )
        except ov.StepFailed as failure:
            failed.append(time.monotonic())
            return f"gave up: {failure}"
        return "ran"

    try:
        async with Harness(app, threads=1) as h:
            h.client.send(Job(job_id="first"))
            await asyncio.sleep(0.1)
            h.client.send(Job(job_id="queued", hang=True))
            await asyncio.wait_for(h.idle(), 20)
            by_key = {i.key: i for i in h.client.instances()}
            assert "timed out after 0.3s" in str(by_key["queued"].result)
    finally:
        release.set()
    assert len(started) == 1
    assert 0.25 <= failed[0] - started[0] < 1.0
