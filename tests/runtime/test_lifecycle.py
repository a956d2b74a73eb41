"""An engine's lifecycle against a real SQLite file: an abandoned engine lets the commit
already running land before it lets go of the file and commits nothing after it (a crash
just after that commit), through ``Engine.abandon`` and through ``Host.abandon``; a
stopped engine never starts again (it would hold the file's lock reading nothing)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.backends import open_backend
from overture.backends.sqlite import SqliteBackend
from overture.ports import Batch
from overture.runtime.engine import Engine
from overture.runtime.host import Host


def _app() -> ov.App:
    app = ov.App("lifecycle")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        return None

    return app


def _slow_commits(backend: SqliteBackend, seconds: float) -> list[tuple[str, float, Any]]:
    """Make every commit of the real backend take ``seconds`` longer; record when each
    began and ended (with its offsets)."""
    events: list[tuple[str, float, Any]] = []
    commit = backend.commit

    def slow(batch: Batch) -> None:
        events.append(("begin", time.monotonic(), dict(batch.offsets)))
        time.sleep(seconds)
        commit(batch)
        events.append(("end", time.monotonic(), dict(batch.offsets)))

    backend.commit = slow  # type: ignore[method-assign]
    return events


async def _commit_running(events: list[tuple[str, float, Any]]) -> None:
    for _ in range(500):
        if events and events[-1][0] == "begin":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no commit started")


@pytest.mark.parametrize("via", ["engine", "host"])
async def test_abandon_waits_for_the_running_commit_and_commits_nothing_after(
    tmp_path: Path, via: str
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    backend = open_backend(url)
    assert isinstance(backend, SqliteBackend)
    events = _slow_commits(backend, 0.4)
    app = _app()
    with ov.Client(backend, app=app) as client:
        client.send_many([client.envelope("go", {}, key=f"k{i}") for i in range(3)])
        if via == "engine":
            engine = Engine(app, backend, batch_size=1)
            task = asyncio.create_task(engine.run())
            await _commit_running(events)
            await engine.abandon()
        else:
            host = Host(app, backend, batch_size=1)
            await host.start()
            await _commit_running(events)
            await host.abandon()
        abandoned = time.monotonic()
        # the commit that was running has landed; none began after it
        assert [kind for kind, _, _ in events] == ["begin", "end"]
        assert events[-1][1] <= abandoned
        await asyncio.sleep(0.6)  # time for another commit, if one were coming
        assert [kind for kind, _, _ in events] == ["begin", "end"]
        if via == "engine":
            with pytest.raises(RuntimeError):
                await task
        # the file is free, and a new engine resumes right after the landed commit
        fresh = open_backend(url)
        second = Engine(app, fresh)
        await second.run_until_idle()
        await second.stop()
        fresh.close()
        assert len(client.instances(status="completed")) == 3
    backend.close()


async def test_a_stopped_engine_does_not_start_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    backend = open_backend(url)
    engine = Engine(_app(), backend)
    await engine.run_until_idle()
    await engine.stop()
    with pytest.raises(RuntimeError, match="was stopped"):
        await engine.run_until_idle()
    second = Engine(_app(), backend)  # no EngineBusy: the stopped one holds nothing
    await second.start()
    await second.stop()
    backend.close()
