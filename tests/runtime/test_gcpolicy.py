"""The engine raises the GC's first threshold while it runs and restores it after."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import overture as ov
from overture.backends import open_backend
from overture.runtime import gcpolicy


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_nested_holders_restore_the_setting_of_the_first() -> None:
    first = gcpolicy.raise_threshold(20_000)
    assert gc.get_threshold() == (20_000, 10, 10)
    second = gcpolicy.raise_threshold(5_000)  # never lowers
    assert gc.get_threshold() == (20_000, 10, 10)
    first()
    first()  # releasing twice counts once
    assert gc.get_threshold() == (20_000, 10, 10)
    second()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_disabled_collector_stays_disabled() -> None:
    gc.set_threshold(0, 10, 10)
    release = gcpolicy.raise_threshold(20_000)
    assert gc.get_threshold() == (0, 10, 10)
    release()
    assert gc.get_threshold() == (0, 10, 10)


def test_none_leaves_the_interpreter_alone() -> None:
    release = gcpolicy.raise_threshold(None)
    assert gc.get_threshold() == (700, 10, 10)
    release()
    assert gc.get_threshold() == (700, 10, 10)


async def test_an_engine_raises_it_while_it_runs() -> None:
    app = ov.App("gc")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> int:
        return 1

    engine = ov.Engine(app, open_backend("memory://"), gc_threshold=30_000)
    await engine.start()
    assert gc.get_threshold()[0] == 30_000
    await engine.run_until_idle()
    await engine.stop()
    assert gc.get_threshold() == (700, 10, 10)
    untouched = ov.Engine(app, open_backend("memory://"), gc_threshold=None)
    await untouched.start()
    assert gc.get_threshold() == (700, 10, 10)
    await untouched.stop()


async def test_a_failed_last_commit_still_restores_it_and_releases_the_broker(
    tmp_path: Path,
) -> None:
    app = ov.App("gc-fail")
    release_step = asyncio.Event()

    async def slow() -> int:
        await release_step.wait()
        return 1

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> int:
        return int(await ctx.step(slow))

    broker = open_backend(f"sqlite:///{tmp_path / 'gc.db'}")
    engine = ov.Engine(app, broker, gc_threshold=30_000)
    task = asyncio.create_task(engine.run())
    ov.Client(broker, app=app).send("go", {})
    for _ in range(200):  # until the step runs
        await asyncio.sleep(0.01)
        if engine.executor.busy:
            break
    assert engine.executor.busy and gc.get_threshold()[0] == 30_000

    def failing(batch: object) -> None:
        raise OSError("disk full")

    broker.commit = failing  # type: ignore[method-assign]
    stopping = asyncio.create_task(engine.stop(grace=2.0))
    release_step.set()  # the step ends within the grace: its outcome's commit fails
    with pytest.raises(OSError, match="disk full"):
        await task
    await asyncio.wait_for(stopping, 5)  # stop() returns instead of waiting forever
    assert gc.get_threshold() == (700, 10, 10)
    again = ov.Engine(app, broker)  # the broker's engine lock was released
    await again.start()
    await again.stop()
    broker.close()
