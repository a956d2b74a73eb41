"""Windows on Kafka: events keyed otherwise in the log are re-keyed to the partition of
their window key, state lives in the changelog, and a new engine (a new group member
after a crash) restores it: every window's result once, counts exact."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import overture as ov
from overture.ports import partition_for
from overture.testing import Harness

from ..conftest import kafka_url

T0 = 1_800_000_000.0


def ticks_app() -> ov.App:
    app = ov.App("kticks")

    @app.window(
        source="tick",
        key="sensor",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"n": ov.Count(), "sum": ov.Sum("v")},
        time_field="at",
        # re-keyed events reach their partition through the internal topic, interleaved
        # with the events already there: the grace keeps that reordering from being late
        grace=timedelta(seconds=60),
        idle=None,
    )
    def counts(result: ov.WindowResult) -> ov.Event:
        return ov.Event.of(
            "window.counted",
            {"key": result.key, "start": result.start.timestamp(), "n": result.values["n"]},
        )

    return app


def tick(sensor: str, at: float, *, keyed: str) -> ov.Event:
    # keyed by something else than the window key: the engine must re-key it
    return ov.Event.of("tick", {"sensor": sensor, "at": T0 + at, "v": 1}, key=keyed)


def counted(h: Harness) -> Counter[tuple[Any, Any]]:
    got: Counter[tuple[Any, Any]] = Counter()
    for event in h.client.events(type="window.counted"):
        assert event.envelope is not None
        got[(event.envelope.data["key"], event.envelope.data["start"] - T0)] += event.envelope.data[
            "n"
        ]
    return got


@pytest.mark.timeout(240)
async def test_rekeyed_windows_survive_a_new_engine(kafka_bootstrap: str) -> None:
    app = ticks_app()
    sensors = [f"s{i}" for i in range(6)]
    async with Harness(app, kafka_url(kafka_bootstrap, partitions=2)) as h:
        for i in range(60):
            h.client.send(tick(sensors[i % 6], i * 0.25, keyed=f"batch{i % 5}"))
        await h.idle()
        # s0 at 0, 1.5, ..., 13.5: both windows open (grace), 7 and 3 events
        assert [w.values["n"] for w in h.client.window("counts", "s0")] == [7, 3]
        assert h.engine.stats["stream_rekeyed"] > 0
        await h.restart()  # the window state comes back from the changelog
        for i in range(60, 120):
            h.client.send(tick(sensors[i % 6], i * 0.25, keyed=f"batch{i % 5}"))
        await h.idle()  # every re-keyed tick is home before the watermark jumps
        # a far-future tick whose window key lives on each partition closes every window
        flushes = {partition_for(f"flush{i}", 2): f"flush{i}" for i in range(20)}
        assert len(flushes) == 2
        for sensor in flushes.values():
            h.client.send(tick(sensor, 1000, keyed=sensor))
        await h.idle()
        await h.idle()
        got = counted(h)
        expected = Counter({(s, float(start)): 0 for s in sensors for start in (0, 10, 20)})
        for i in range(120):
            expected[(sensors[i % 6], float((i * 0.25) // 10 * 10))] += 1
        assert {k: v for k, v in got.items() if not str(k[0]).startswith("flush")} == {
            k: v for k, v in expected.items() if v
        }
        assert h.client.late_events("counts") == 0
        assert len(h.client.events(type="window.counted")) == sum(
            1 for k in got if not str(k[0]).startswith("flush")
        )
