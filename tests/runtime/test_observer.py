"""The observer seam: the runtime reports each moment that matters, exactly once.

A recording observer sees a process with a retried step and a durable sleep, a handler
that gives up (a dead letter), and an instance parked for an unregistered version, on
each embedded backend, with and without the instance cache (``cache_size=0`` replays on
every input: a replay must not report a second start).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.runtime.observer import Observer
from overture.runtime.options import EngineOptions
from overture.testing import Harness, VirtualClock

RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=10))


class Recorder(Observer):
    """Keeps every call, in order (commits apart: their count depends on batching)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.commits: list[tuple[str, int, int]] = []

    def batch_consumed(self, partition: int, records: int) -> None:
        self.calls.append(("batch", records))

    def instance_started(self, instance_id: str, process: str) -> None:
        self.calls.append(("started", process))

    def instance_finished(self, instance_id: str, process: str, status: str) -> None:
        self.calls.append(("finished", process, status))

    def instance_parked(self, instance_id: str, process: str, reason: str) -> None:
        self.calls.append(("parked", process, reason))

    def step_started(self, name: str, attempt: int, instance_id: str | None) -> None:
        self.calls.append(("step", name, attempt, instance_id is not None))

    def step_finished(
        self, name: str, attempt: int, instance_id: str | None, ok: bool, duration: float
    ) -> None:
        assert duration >= 0
        self.calls.append(("step done", name, attempt, ok))

    def commit_started(self, rows: int, appends: int) -> None:
        self.commits.append(("begin", rows, appends))

    def commit_finished(self, rows: int, appends: int, duration: float) -> None:
        assert duration >= 0
        self.commits.append(("end", rows, appends))

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        self.calls.append(("dead letter", source, reason))

    def timer_fired(self, instance_id: str, lateness: float) -> None:
        self.calls.append(("timer", lateness))

    def rebalance(self, assigned: Sequence[int], revoked: Sequence[int]) -> None:
        self.calls.append(("rebalance", list(assigned), list(revoked)))


def observed_app(attempts: list[int]) -> ov.App:
    app = ov.App("obs")

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        result = await ctx.step(flaky, retry=RETRY, name="flaky")
        await ctx.sleep(timedelta(seconds=30))
        ctx.emit("went", {"result": result})
        return result

    @app.on("audit", retry=ov.Retry(max_attempts=1), name="auditor")
    async def auditor(event: ov.Event) -> None:
        raise ValueError("no auditor today")

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://observed"
    return f"sqlite:///{tmp_path / 'observed.db'}"


def _pairs(commits: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The (rows, appends) of each commit, checking that every one began and ended once,
    in order (a commit ends before the next one begins: commits stay in order)."""
    assert len(commits) % 2 == 0
    pairs = []
    for begin, end in zip(commits[::2], commits[1::2], strict=True):
        assert begin[0] == "begin" and end == ("end", *begin[1:])
        pairs.append(begin[1:])
    return pairs


@pytest.mark.parametrize("cache_size", [10_000, 0], ids=["cached", "replay"])
async def test_the_observer_sees_every_moment_once(url: str, cache_size: int) -> None:
    recorder = Recorder()
    attempts: list[int] = []
    options = EngineOptions(cache_size=cache_size, observer=recorder)
    async with Harness(observed_app(attempts), url, options=options) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        assert recorder.calls == [
            ("batch", 1),
            ("started", "proc"),
            ("step", "flaky", 1, True),
            ("step done", "flaky", 1, False),
        ]
        await h.advance(10)  # the retry's backoff
        await h.advance(30)  # the durable sleep
        h.client.send("audit", {}, key="k")
        await h.idle()
        assert h.client.instances()[0].status == "completed"
    assert recorder.calls == [
        ("batch", 1),
        ("started", "proc"),
        ("step", "flaky", 1, True),
        ("step done", "flaky", 1, False),
        ("step", "flaky", 2, True),
        ("step done", "flaky", 2, True),
        ("timer", 0.0),
        ("finished", "proc", "completed"),
        ("batch", 1),  # the emitted event, read back (nothing consumes it)
        ("batch", 1),
        ("step", "auditor", 1, False),
        ("step done", "auditor", 1, False),
        ("dead letter", "handler:auditor", "ValueError: no auditor today"),
    ]
    pairs = _pairs(recorder.commits)
    assert sum(appends for _, appends in pairs) == 1  # the one emitted event
    # the first commit: the instance row, its journal chunk, the step's retry row
    assert pairs[0] == (3, 0)


async def test_a_timer_reports_how_late_it_fired(url: str) -> None:
    recorder = Recorder()
    app = ov.App("late")

    @app.process(trigger="go")
    async def sleeper(ctx: ov.Context, event: ov.Event) -> None:
        await ctx.sleep(timedelta(seconds=5))

    clock = VirtualClock()
    async with Harness(app, url, clock=clock, observer=recorder) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        clock.advance(12)  # due at 5 s, seen at 12 s
        await h.idle()
    assert ("timer", 7.0) in recorder.calls
    assert recorder.calls[-1] == ("finished", "sleeper", "completed")


async def test_an_instance_parked_for_an_unregistered_version_is_reported_once(
    url: str,
) -> None:
    old = ov.App("versions")

    @old.process(trigger="go", version=1)
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        await ctx.wait_for("pay", key="k")

    async with Harness(old, url) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
    new = ov.App("versions")

    @new.process(trigger="go", version=2)
    async def proc2(ctx: ov.Context, event: ov.Event) -> None:
        await ctx.wait_for("pay", key="k")

    recorder = Recorder()
    async with Harness(new, url, cache_size=0, observer=recorder) as h:
        h.client.send("pay", {}, key="k")
        await h.idle()
        h.client.send("pay", {}, key="k")  # reaches the parked instance again
        await h.idle()
        assert h.client.instances()[0].status == "stuck"
    reason = "process 'proc' version 1 is not registered in this app"
    assert recorder.calls == [("batch", 1), ("parked", "proc", reason), ("batch", 1)]
