"""Patterns on Kafka: events keyed otherwise are re-keyed to their pattern key's
partition, partial matches live in the changelog, and a new engine restores them: each
match once."""

from __future__ import annotations

from datetime import timedelta

import pytest

import overture as ov
from overture.testing import Harness

from ..conftest import kafka_url

T0 = 1_800_000_000.0


def pairs_app() -> ov.App:
    app = ov.App("kpairs")

    @app.pattern(
        ov.begin("door.opened").followed_by("door.closed"),
        key="door",
        time_field="at",
        grace=timedelta(seconds=60),  # re-keyed events interleave: not late
        idle=None,
    )
    def pairs(match: ov.Match) -> ov.Event:
        return ov.Event.of("door.cycled", {"door": match.key})

    return app


def door(kind: str, name: str, at: float) -> ov.Event:
    return ov.Event.of(kind, {"door": name, "at": T0 + at}, key=f"other{int(at) % 5}")


@pytest.mark.timeout(240)
async def test_partial_matches_survive_a_new_engine(kafka_bootstrap: str) -> None:
    doors = [f"d{i}" for i in range(6)]
    async with Harness(pairs_app(), kafka_url(kafka_bootstrap, partitions=2)) as h:
        for i, name in enumerate(doors):
            h.client.send(door("door.opened", name, i))
        await h.idle()
        assert sorted(p["key"] for p in h.client.window("pairs")) == doors
        await h.restart()  # the partial matches come back from the changelog
        for i, name in enumerate(doors):
            h.client.send(door("door.closed", name, 10 + i))
        await h.idle()
        await h.idle()
        got = sorted(
            e.envelope.data["door"] for e in h.client.events(type="door.cycled") if e.envelope
        )
        assert got == doors
        assert h.client.window("pairs") == []
        assert h.client.dead_letters() == []
