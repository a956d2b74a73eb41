"""Retries with durable backoff, terminal errors, and saga compensation."""

from __future__ import annotations

from datetime import timedelta

import overture as ov

from .conftest import Factory


class Flaky:
    """A step that fails a given number of times before succeeding."""

    def __init__(self, failures: int, error: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.error = error
        self.attempts = 0

    async def __call__(self, value: str) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error(f"failure {self.attempts}")
        return value.upper()


def retry_app(step: Flaky, retry: ov.Retry) -> ov.App:
    app = ov.App("retry")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        try:
            return await ctx.step(step, "ok", retry=retry, name="flaky")
        except ov.StepFailed as error:
            return f"gave up after {error.attempts}: {error.error_type}: {error.message}"

    return app


BACKOFF = ov.Retry(max_attempts=4, initial_interval=timedelta(seconds=10), backoff=2.0)


async def test_retries_follow_the_backoff_schedule(harness: Factory) -> None:
    step = Flaky(failures=2)
    async with harness(retry_app(step, BACKOFF)) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        assert step.attempts == 1
        await h.advance(9.9)
        assert step.attempts == 1  # not before the first interval
        await h.advance(0.1)
        assert step.attempts == 2
        await h.advance(19.9)
        assert step.attempts == 2  # the second interval is doubled
        await h.advance(0.1)
        (instance,) = h.client.instances()
        assert (step.attempts, instance.result) == (3, "OK")
        retries = [e for e in h.client.journal(instance.id) if e["k"] == "retry"]
        assert [e["a"] for e in retries] == [1, 2]


async def test_crash_during_backoff_resumes_the_schedule(harness: Factory) -> None:
    step = Flaky(failures=1)
    async with harness(retry_app(step, BACKOFF)) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(5)
        await h.restart()
        await h.idle()
        assert step.attempts == 1  # the restart did not retry early
        await h.advance(5)
        assert step.attempts == 2
        assert h.client.instances()[0].result == "OK"


async def test_exhausted_retries_raise_step_failed(harness: Factory) -> None:
    step = Flaky(failures=10)
    retry = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=1))
    async with harness(retry_app(step, retry)) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(1)
        await h.advance(2)
        assert step.attempts == 3
        assert h.client.instances()[0].result == "gave up after 3: RuntimeError: failure 3"


async def test_terminal_and_non_retryable_errors_are_not_retried(harness: Factory) -> None:
    terminal = Flaky(failures=10, error=ov.TerminalError)
    listed = Flaky(failures=10, error=KeyError)
    retry = ov.Retry(max_attempts=5, non_retryable=(KeyError,))
    for step, error in ((terminal, "TerminalError"), (listed, "KeyError")):
        async with harness(retry_app(step, retry)) as h:
            h.client.send("go", {}, key=error)  # the second run shares the first one's broker
            await h.idle()
            # far past every backoff the policy allows: a retry would have run by now
            for _ in range(retry.max_attempts):
                await h.advance(retry.max_interval.total_seconds())
            assert step.attempts == 1
            (instance,) = [i for i in h.client.instances() if i.key == error]
            assert instance.status == "completed"
            assert instance.result.startswith(f"gave up after 1: {error}")
            assert [e for e in h.client.journal(instance.id) if e["k"] == "retry"] == []


async def test_max_interval_caps_every_backoff_delay(harness: Factory) -> None:
    step = Flaky(failures=4)
    # uncapped, the delays would be 10, 100, 1000, 10000 s
    retry = ov.Retry(
        max_attempts=5,
        initial_interval=timedelta(seconds=10),
        backoff=10.0,
        max_interval=timedelta(seconds=30),
    )
    async with harness(retry_app(step, retry)) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(10)
        assert step.attempts == 2
        for expected in (3, 4, 5):
            await h.advance(29.9)
            assert step.attempts == expected - 1  # not before the cap
            await h.advance(0.1)
            assert step.attempts == expected  # and not after it either
        (instance,) = h.client.instances()
        assert instance.result == "OK"
        retries = [e for e in h.client.journal(instance.id) if e["k"] == "retry"]
        assert [e["a"] for e in retries] == [1, 2, 3, 4]
        assert [round(e["due"] - e["t"], 6) for e in retries] == [10, 30, 30, 30]


async def test_explicit_compensation_runs_lifo(harness: Factory) -> None:
    app = ov.App("saga")
    log: list[str] = []

    def undo(name: str) -> None:
        log.append(f"undo {name}")

    async def do(name: str) -> None:
        log.append(f"do {name}")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        for name in ("flight", "hotel", "car"):
            await ctx.step(do, name)
            ctx.compensate_with(undo, name)
        try:
            await ctx.wait_for("confirmed", timeout=timedelta(minutes=5))
        except ov.WaitTimeout:
            await ctx.compensate()
            return "rolled back"
        return "booked"

    async with harness(app) as h:
        h.client.send("go", {}, key="trip")
        await h.idle()
        await h.advance(300)
        assert h.client.instances()[0].result == "rolled back"
        assert log == ["do flight", "do hotel", "do car", "undo car", "undo hotel", "undo flight"]


async def test_failing_process_compensates_automatically_then_fails(harness: Factory) -> None:
    app = ov.App("saga")
    log: list[str] = []

    async def reserve(item: str) -> None:
        log.append(f"reserve {item}")

    async def release(item: str) -> None:
        log.append(f"release {item}")

    async def charge() -> None:
        raise ov.TerminalError("card declined")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        for item in ("a", "b"):
            await ctx.step(reserve, item)
            ctx.compensate_with(release, item)
        await ctx.step(charge)
        return "unreachable"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "failed"
        assert instance.error["type"] == "StepFailed"
        assert "card declined" in instance.error["message"]
        assert log == ["reserve a", "reserve b", "release b", "release a"]


async def test_step_timeout_counts_as_a_failed_attempt(harness: Factory) -> None:
    import asyncio

    app = ov.App("timeout")

    async def hang() -> None:
        await asyncio.sleep(10)

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        try:
            await ctx.step(hang, timeout=timedelta(milliseconds=20), retry=ov.Retry(max_attempts=1))
        except ov.StepFailed as error:
            return error.error_type
        return "finished"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        assert h.client.instances()[0].result == "TimeoutError"
