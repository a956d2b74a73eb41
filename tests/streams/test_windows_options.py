"""Window options end to end (memory): every aggregation, emit="every_update", async and
ill-behaved callbacks, the async client, and no streams participant without windows."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import overture as ov
from overture.streams.runtime import Streams
from overture.testing import Harness

T0 = 1_800_000_000.0


def reading(sensor: str, at: float, value: Any, kind: str = "x") -> ov.Event:
    return ov.Event.of("reading", {"sensor": sensor, "at": T0 + at, "v": value, "kind": kind})


def app_with(callback: Any, **options: Any) -> ov.App:
    app = ov.App("opts")
    options.setdefault("aggregate", {"n": ov.Count()})
    options.setdefault("window", ov.Tumbling(timedelta(seconds=10)))
    app.window(source="reading", key="sensor", time_field="at", idle=None, **options)(callback)
    return app


async def test_every_aggregation() -> None:
    seen: list[ov.WindowResult] = []
    aggregate = {
        "n": ov.Count(),
        "sum": ov.Sum("v"),
        "min": ov.Min("v"),
        "max": ov.Max("v"),
        "mean": ov.Mean("v"),
        "kinds": ov.CountDistinct("kind"),
        "top": ov.TopK("kind", 2),
        "last": ov.Last("v"),
        "product": ov.Reduce(1, lambda acc, v: acc * v, field="v"),
    }

    def windows(result: ov.WindowResult) -> None:
        seen.append(result)

    async with Harness(app_with(windows, aggregate=aggregate)) as h:
        for at, v, kind in [(1, 2, "a"), (3, 5, "b"), (2, 3, "a"), (4, 4, "c")]:
            h.client.send(reading("s", at, v, kind))
        h.client.send(reading("s", 50, 1))
        await h.idle()
    (result,) = seen
    assert result.values == {
        "n": 4,
        "sum": 14,
        "min": 2,
        "max": 5,
        "mean": 3.5,
        "kinds": 3,
        "top": [["a", 2], ["b", 1]],
        "last": 4,  # the newest event time (4), not the last to arrive
        "product": 120,
    }


async def test_every_update_emits_each_change_with_its_own_id() -> None:
    def windows(result: ov.WindowResult) -> ov.Event:
        return ov.Event.of("updated", {"n": result.values["n"]})

    async with Harness(app_with(windows, emit="every_update")) as h:
        for at in (1, 2, 3):
            h.client.send(reading("s", at, 1))
        h.client.send(reading("s", 30, 1))  # closes [0, 10) silently, updates [30, 40)
        await h.idle()
        events = [e.envelope for e in h.client.events(type="updated") if e.envelope]
        assert [e.data["n"] for e in events] == [1, 2, 3, 1]
        assert len({e.id for e in events}) == 4


async def test_async_callback_and_lists_of_events() -> None:
    async def windows(result: ov.WindowResult) -> list[ov.Event]:
        return [ov.Event.of("a", {"k": result.key}), ov.Event.of("b", {"k": result.key})]

    async with Harness(app_with(windows)) as h:
        h.client.send(reading("s", 1, 1))
        h.client.send(reading("s", 30, 1))
        await h.idle()
        assert len(h.client.events(type="a")) == len(h.client.events(type="b")) == 1
        async with ov.AsyncClient(h.backend, app=h.app) as client:
            (open_window,) = await client.window("windows")
            assert open_window.values == {"n": 1}
            assert await client.late_events("windows") == 0


async def test_a_callback_that_awaits_io_or_returns_junk_is_dead_lettered() -> None:
    async def waits(result: ov.WindowResult) -> None:
        await asyncio.sleep(0.01)

    def junk(result: ov.WindowResult) -> Any:
        return {"not": "an event"}

    for callback, needle in [(waits, "must not wait for I/O"), (junk, "not {'not'")]:
        async with Harness(app_with(callback, retry=ov.Retry(max_attempts=1))) as h:
            h.client.send(reading("s", 1, 1))
            h.client.send(reading("s", 30, 1))
            await h.idle()
            (letter,) = h.client.dead_letters()
            assert needle in letter.reason, letter.reason
            assert letter.source.startswith("stream:")


async def test_reduce_that_raises_dead_letters_the_event() -> None:
    seen: list[ov.WindowResult] = []
    aggregate = {"r": ov.Reduce(0, lambda acc, v: acc + 10 // v, field="v")}
    async with Harness(app_with(seen.append, aggregate=aggregate)) as h:
        h.client.send(reading("s", 1, 0))  # 10 // 0
        h.client.send(reading("s", 2, 5))
        h.client.send(reading("s", 30, 1))
        await h.idle()
        (letter,) = h.client.dead_letters()
        assert "ZeroDivisionError" in letter.reason
    assert seen[0].values == {"r": 2}


def test_invalid_options_are_config_errors() -> None:
    app = ov.App("bad")
    with pytest.raises(ov.ConfigError, match="cannot merge"):
        app.window(
            source="x",
            key="k",
            window=ov.Session(timedelta(seconds=1)),
            aggregate={"r": ov.Reduce(0, lambda a, v: a)},
        )(lambda r: None)
    with pytest.raises(ov.ConfigError, match="emit="):
        app.window(
            source="x", key="k", window=ov.Tumbling(timedelta(1)), aggregate={"n": ov.Count()},
            emit="sometimes",  # type: ignore[arg-type]
        )(lambda r: None)  # fmt: skip
    with pytest.raises(ov.ConfigError, match="every must not exceed"):
        ov.Hopping(timedelta(seconds=1), timedelta(seconds=2))
    with pytest.raises(ov.ConfigError, match="positive"):
        ov.Tumbling(timedelta(0))
    register = app.window(
        source="x", key="k", window=ov.Tumbling(timedelta(1)), aggregate={"n": ov.Count()},
        name="same",
    )  # fmt: skip
    register(lambda r: None)
    with pytest.raises(ov.ConfigError, match="defined twice"):
        register(lambda r: None)


async def test_no_streams_participant_without_windows() -> None:
    app = ov.App("plain")

    @app.on("x")
    def handle(event: ov.Event) -> None:
        pass

    async with Harness(app) as h:
        assert not any(isinstance(p, Streams) for p in h.engine._loop._participants)
