"""Windows end to end on an engine: results emitted as events, dead letters, lateness,
idle close by the engine clock, bounded state, client queries (memory and SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.events import Envelope, encode
from overture.streams.runtime import namespace
from overture.testing import Harness

T0 = 1_800_000_000.0  # the VirtualClock's start: event times near the engine clock


class PaymentFailed(ov.Event, type="payment.failed"):
    user_id: str
    amount: int
    at: float


class FraudSuspected(ov.Event, type="fraud.suspected"):
    user_id: str
    failures: int
    total: int


Make = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    url = "memory://w" if request.param == "memory" else f"sqlite:///{tmp_path / 'w.db'}"

    @asynccontextmanager
    async def harness(app: ov.App) -> AsyncIterator[Harness]:
        async with Harness(app, url) as h:
            yield h

    return harness


def fraud_app(**options: Any) -> tuple[ov.App, list[ov.WindowResult]]:
    app = ov.App("fraud")
    seen: list[ov.WindowResult] = []
    options.setdefault("idle", None)

    @app.window(
        source=PaymentFailed,
        key="user_id",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"failures": ov.Count(), "total": ov.Sum("amount")},
        grace=timedelta(seconds=2),
        time_field="at",
        **options,
    )
    def failures(result: ov.WindowResult) -> ov.Event | None:
        seen.append(result)
        if result.values["failures"] >= 2:
            return FraudSuspected(
                user_id=result.key,
                failures=result.values["failures"],
                total=result.values["total"],
            )
        return None

    return app, seen


def pay(user: str, amount: int, at: float) -> PaymentFailed:
    return PaymentFailed(user_id=user, amount=amount, at=T0 + at)


def emitted(h: Harness, type: str) -> list[dict[str, Any]]:
    return [e.envelope.data for e in h.client.events(type=type) if e.envelope is not None]


async def test_a_window_closes_once_the_watermark_passes_its_end(make: Make) -> None:
    app, seen = fraud_app()
    async with make(app) as h:
        h.client.send(pay("u1", 5, 1))
        h.client.send(pay("u1", 7, 3))
        h.client.send(pay("u2", 1, 4))
        h.client.send(pay("u1", 1, 11))  # watermark 9: [0, 10) still open
        await h.idle()
        assert seen == []
        assert [w.values for w in h.client.window("failures", "u1")] == [
            {"failures": 2, "total": 12},
            {"failures": 1, "total": 1},
        ]
        h.client.send(pay("u2", 1, 12))  # watermark 10: [0, 10) closes for every key
        await h.idle()
        assert sorted((w.key, w.values["failures"]) for w in seen) == [("u1", 2), ("u2", 1)]
        assert seen[0].start == datetime.fromtimestamp(T0, UTC)
        assert seen[0].end == datetime.fromtimestamp(T0 + 10, UTC)
        assert emitted(h, "fraud.suspected") == [{"user_id": "u1", "failures": 2, "total": 12}]
        # the closed window's state is gone; the open ones remain
        assert [w.start for w in h.client.window("failures", "u1")] == [
            datetime.fromtimestamp(T0 + 10, UTC)
        ]


async def test_late_events_are_counted_and_change_nothing(make: Make) -> None:
    app, seen = fraud_app()
    async with make(app) as h:
        h.client.send(pay("u1", 5, 1))
        h.client.send(pay("u1", 5, 15))  # watermark 13: [0, 10) closes
        h.client.send(pay("u1", 100, 9))  # its window closed: late
        await h.idle()
        assert [w.values for w in seen] == [{"failures": 1, "total": 5}]
        assert h.client.late_events("failures") == 1
        assert [w.values for w in h.client.window("failures")] == [{"failures": 1, "total": 5}]


async def test_on_late_gets_the_late_event() -> None:
    late: list[Any] = []
    app = ov.App("late")

    @app.window(
        source=PaymentFailed,
        key="user_id",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"n": ov.Count()},
        time_field="at",
        idle=None,
        on_late=lambda e: late.append(e.amount),
    )
    def counts(result: ov.WindowResult) -> None:
        return None

    async with Harness(app) as h:
        h.client.send(pay("u1", 1, 1))
        h.client.send(pay("u1", 2, 20))
        h.client.send(pay("u1", 3, 2))
        await h.idle()
        assert late == [3]
        assert h.client.late_events("counts") == 1


async def test_unusable_events_are_dead_lettered_and_the_partition_goes_on(make: Make) -> None:
    app, seen = fraud_app()
    async with make(app) as h:
        invalid = Envelope("payment.failed", {"amount": 1, "at": T0})  # not its contract
        h.client.send_raw(encode(invalid))
        h.client.send(ov.Event.of("other", {}))
        h.client.send(pay("u1", 5, 1))
        h.client.send(pay("u1", 5, 30))
        await h.idle()
        assert [w.values for w in seen] == [{"failures": 1, "total": 5}]
        assert len(h.client.dead_letters()) == 1  # the contract's own validation


def readings_app(name: str) -> tuple[ov.App, list[ov.WindowResult]]:
    """Untyped ``reading`` events summed per sensor in 10 s windows, time in ``at``."""
    app = ov.App(name)
    seen: list[ov.WindowResult] = []

    @app.window(
        source="reading",
        key="sensor",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"sum": ov.Sum("value")},
        time_field="at",
        idle=None,
    )
    def sums(result: ov.WindowResult) -> None:
        seen.append(result)

    return app, seen


async def test_missing_key_bad_time_and_ill_typed_field_are_dead_lettered(make: Make) -> None:
    app, seen = readings_app("untyped")
    async with make(app) as h:
        h.client.send(ov.Event.of("reading", {"value": 1, "at": T0}))
        h.client.send(ov.Event.of("reading", {"sensor": "s", "value": 1, "at": "yesterday"}))
        h.client.send(ov.Event.of("reading", {"sensor": "s", "value": "hot", "at": T0}))
        h.client.send(ov.Event.of("reading", {"sensor": "s", "value": 2, "at": T0 + 1}))
        h.client.send(ov.Event.of("reading", {"sensor": "s", "value": 3, "at": T0 + 20}))
        await h.idle()
        reasons = {d.id: d.reason for d in h.client.dead_letters()}
        assert len(reasons) == 3
        assert "key: the data has no field 'sensor'" in reasons["stream:sums:0:0"]
        assert "'yesterday', not an ISO-8601 time" in reasons["stream:sums:0:1"]
        assert "'hot', not a number" in reasons["stream:sums:0:2"]
        assert all(d.source == "stream:sums" for d in h.client.dead_letters())
        assert [w.values for w in seen] == [{"sum": 2}]


async def test_a_raising_callback_is_retried_then_dead_lettered(make: Make) -> None:
    app = ov.App("flaky")
    calls: list[int] = []

    @app.window(
        source=PaymentFailed,
        key="user_id",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"n": ov.Count()},
        time_field="at",
        idle=None,
        retry=ov.Retry(max_attempts=3),
    )
    def flaky(result: ov.WindowResult) -> ov.Event:
        calls.append(result.values["n"])
        if len(calls) < 3:
            raise ConnectionError("try again")
        if result.key == "bad":
            raise ValueError("never works")
        return ov.Event.of("counted", {"key": result.key, "n": result.values["n"]})

    async with make(app) as h:
        h.client.send(pay("u1", 1, 1))
        h.client.send(pay("u1", 1, 30))
        await h.idle()
        assert calls == [1, 1, 1]
        assert emitted(h, "counted") == [{"key": "u1", "n": 1}]
        h.client.send(pay("bad", 1, 31))
        h.client.send(pay("bad", 1, 60))
        await h.idle()
        letters = h.client.dead_letters()
        assert len(letters) == 1
        assert letters[0].attempts == 3
        assert "ValueError: never works" in letters[0].reason
        assert letters[0].id.startswith("stream:flaky:bad:")


async def test_idle_partition_closes_by_the_engine_clock(make: Make) -> None:
    app, seen = fraud_app(idle=timedelta(seconds=5))
    async with make(app) as h:
        h.client.send(pay("u1", 5, 1))
        h.client.send(pay("u1", 5, 2))
        await h.idle()
        assert seen == []
        await h.advance(10 + 5 + 2 - 1)  # clock watermark 9: not yet
        assert seen == []
        await h.advance(1)  # now - idle - grace = T0 + 10: the window's end
        assert [w.values for w in seen] == [{"failures": 2, "total": 10}]
        assert emitted(h, "fraud.suspected") == [{"user_id": "u1", "failures": 2, "total": 10}]
        # nothing left: the key's state is deleted
        store = h.backend.store
        assert [k for k, _ in store.scan(namespace("failures"), b"k:")] == []


async def test_state_is_deleted_once_windows_close(make: Make) -> None:
    app, seen = fraud_app()
    async with make(app) as h:
        for i in range(50):
            h.client.send(pay(f"u{i}", 1, i % 10))
        h.client.send(pay("last", 1, 100))
        await h.idle()
        assert len(seen) == 50
        keys = [k for k, _ in h.backend.store.scan(namespace("failures"), b"k:")]
        assert keys == [b"k:00000:last"]


async def test_watermark_survives_a_restart(make: Make) -> None:
    app, seen = fraud_app()
    async with make(app) as h:
        h.client.send(pay("u1", 5, 1))
        h.client.send(pay("u1", 5, 15))
        await h.idle()
        assert len(seen) == 1
        await h.restart()
        h.client.send(pay("u1", 5, 2))  # late: the restarted engine knows the watermark
        h.client.send(pay("u1", 5, 30))
        await h.idle()
        assert [w.values["failures"] for w in seen] == [1, 1]
        assert h.client.late_events("failures") == 1


async def test_a_time_no_window_can_hold_is_dead_lettered(make: Make) -> None:
    """Epoch milliseconds where seconds are meant (the year 59,000): dead-lettered, where
    the window it opened used to fail the batch when it closed, at every restart."""
    app, seen = readings_app("far")
    async with make(app) as h:
        h.client.send(ov.Event.of("reading", {"sensor": "s1", "value": 1, "at": T0}))
        h.client.send(ov.Event.of("reading", {"sensor": "s2", "value": 5, "at": T0 * 1000}))
        h.client.send(ov.Event.of("reading", {"sensor": "s3", "value": 7, "at": T0 * 1000 + 20}))
        h.client.send(ov.Event.of("reading", {"sensor": "s1", "value": 2, "at": T0 + 20}))
        await h.idle()
        reasons = {d.id: d.reason for d in h.client.dead_letters()}
        assert set(reasons) == {"stream:sums:0:1", "stream:sums:0:2"}
        assert "outside the years 2 to 9998 (epoch milliseconds" in reasons["stream:sums:0:1"]
        assert [w.values for w in seen] == [{"sum": 1}]  # s1's first window closed on time
