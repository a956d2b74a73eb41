"""The engine raises the GC's first threshold while it runs and restores it after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import overture as ov
from overture.backends import open_broker
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

    engine = ov.Engine(app, open_broker("memory://"), gc_threshold=30_000)
    await engine.start()
    assert gc.get_threshold()[0] == 30_000
    await engine.run_until_idle()
    await engine.stop()
    assert gc.get_threshold() == (700, 10, 10)
    untouched = ov.Engine(app, open_broker("memory://"), gc_threshold=None)
    await untouched.start()
    assert gc.get_threshold() == (700, 10, 10)
    await untouched.stop()
