"""Patterns end to end on an engine (memory and SQLite): absence fired by the engine clock,
followed_by with a where comparing to the match so far, times(n), consumption, dead
letters for a missing key and a raising callback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.streams.runtime import namespace
from overture.testing import Harness

T0 = 1_800_000_000.0


class CheckoutStarted(ov.Event, type="checkout.started"):
    cart_id: str
    at: float


class PaymentSucceeded(ov.Event, type="payment.succeeded"):
    cart_id: str
    at: float


class Price(ov.Event, type="price"):
    symbol: str
    price: float
    at: float


Make = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    url = "memory://p" if request.param == "memory" else f"sqlite:///{tmp_path / 'p.db'}"

    @asynccontextmanager
    async def harness(app: ov.App) -> AsyncIterator[Harness]:
        async with Harness(app, url) as h:
            yield h

    return harness


def emitted(h: Harness, type: str) -> list[dict[str, Any]]:
    return [e.envelope.data for e in h.client.events(type=type) if e.envelope is not None]


def cart_app() -> tuple[ov.App, list[ov.Match]]:
    app = ov.App("carts")
    seen: list[ov.Match] = []

    @app.pattern(
        ov.begin(CheckoutStarted).not_followed_by(PaymentSucceeded).within(timedelta(hours=1)),
        key="cart_id",
        time_field="at",
        idle=timedelta(seconds=5),
    )
    def abandoned(match: ov.Match) -> ov.Event:
        seen.append(match)
        started = match["checkout.started"][0]
        assert isinstance(started, CheckoutStarted)
        return ov.Event.of("cart.abandoned", {"cart_id": started.cart_id})

    return app, seen


async def test_abandoned_cart_fires_by_the_engine_clock_not_when_paid(make: Make) -> None:
    app, seen = cart_app()
    async with make(app) as h:
        h.client.send(CheckoutStarted(cart_id="c1", at=T0 + 1))
        h.client.send(CheckoutStarted(cart_id="c2", at=T0 + 2))
        h.client.send(PaymentSucceeded(cart_id="c2", at=T0 + 60))
        await h.idle()
        assert seen == []
        # the open partial match is queryable: c1 waits at stage 1 (c2's was cancelled)
        assert [(p["key"], p["stage"]) for p in h.client.window("abandoned")] == [("c1", 1)]
        await h.advance(3600 + 5 - 1)  # clock watermark T0 + 3599: c1's deadline not reached
        assert seen == []
        await h.advance(2)  # T0 + 3601 >= c1's deadline (T0 + 3601)
        assert [m.key for m in seen] == ["c1"]
        assert emitted(h, "cart.abandoned") == [{"cart_id": "c1"}]
        await h.advance(3600)
        assert emitted(h, "cart.abandoned") == [{"cart_id": "c1"}]  # once; c2 paid
        assert [k for k, _ in h.backend.store.scan(namespace("abandoned"), b"k:")] == []


async def test_price_move_where_compares_with_the_first_event(make: Make) -> None:
    app = ov.App("trading")

    def moved(event: Price, match: ov.Match) -> bool:
        first = match["price"][0]
        assert isinstance(first, Price)
        return abs(event.price - first.price) / first.price > 0.02

    @app.pattern(
        ov.begin(Price).followed_by(Price, where=moved, name="moved").within(timedelta(seconds=10)),
        key="symbol",
        time_field="at",
        idle=None,
    )
    def move(match: ov.Match) -> ov.Event:
        a, b = match["price"][0], match["moved"][0]
        assert isinstance(a, Price) and isinstance(b, Price)
        return ov.Event.of("price.moved", {"symbol": match.key, "from": a.price, "to": b.price})

    async with make(app) as h:
        for at, price in [(0, 100.0), (1, 101.0), (2, 103.0), (20, 50.0), (31, 51.0)]:
            h.client.send(Price(symbol="X", price=price, at=T0 + at))
        await h.idle()
        # 100 -> 103 (2% is not more than 2%: 101 begins its own partial); 50 -> 51 too late
        assert emitted(h, "price.moved") == [{"symbol": "X", "from": 100.0, "to": 103.0}]


async def test_times_n_and_events_are_consumed(make: Make) -> None:
    app = ov.App("logins")
    seen: list[list[int]] = []

    @app.pattern(ov.begin("login.failed").times(3), key="user", time_field="at", idle=None)
    def locked(match: ov.Match) -> ov.Event:
        seen.append([e.data["n"] for e in match["login.failed"]])
        return ov.Event.of("account.locked", {"user": match.key})

    async with make(app) as h:
        for n in range(7):
            h.client.send(ov.Event.of("login.failed", {"user": "u", "n": n, "at": T0 + n}))
        await h.idle()
        assert seen == [[0, 1, 2], [3, 4, 5]]  # no event in two matches
        assert len(emitted(h, "account.locked")) == 2


async def test_missing_key_and_raising_callback_are_dead_lettered(make: Make) -> None:
    app = ov.App("flaky")
    calls: list[str] = []

    @app.pattern(
        ov.begin("a").followed_by("b"),
        key="k",
        time_field="at",
        idle=None,
        retry=ov.Retry(max_attempts=3),
    )
    def ab(match: ov.Match) -> ov.Event:
        calls.append(match.key)
        if match.key == "bad":
            raise ValueError("never works")
        return ov.Event.of("ab", {"k": match.key})

    async with make(app) as h:
        h.client.send(ov.Event.of("a", {"at": T0}))  # no key
        for i, k in enumerate(("bad", "good")):  # the partition's watermark only rises
            h.client.send(ov.Event.of("a", {"k": k, "at": T0 + 1 + 2 * i}))
            h.client.send(ov.Event.of("b", {"k": k, "at": T0 + 2 + 2 * i}))
        await h.idle()
        letters = h.client.dead_letters()
        reasons = sorted(d.reason for d in letters)
        assert len(letters) == 2
        assert any("key: the data has no field 'k'" in r for r in reasons)
        assert any("ValueError: never works" in r for r in reasons)
        assert calls.count("bad") == 3
        assert emitted(h, "ab") == [{"k": "good"}]


async def test_a_silent_sensor_raises_one_alert_after_its_last_reading(make: Make) -> None:
    app = ov.App("coldchain")

    @app.pattern(
        ov.begin("reading").not_followed_by("reading").within(timedelta(minutes=2)),
        key="sensor",
        time_field="at",
        idle=timedelta(seconds=1),
    )
    def silent(match: ov.Match) -> ov.Event:
        last = match["reading"][0]
        return ov.Event.of("sensor.silent", {"sensor": match.key, "last": last.data["at"]})

    async with make(app) as h:
        for at in (0, 30, 60, 90):
            h.client.send(ov.Event.of("reading", {"sensor": "s1", "at": T0 + at}))
        await h.idle()
        await h.advance(120 + 1 + 60)  # 2 minutes after the first reading: still talking
        assert emitted(h, "sensor.silent") == []
        await h.advance(60)  # 2 minutes (and the idle second) after the last one
        assert emitted(h, "sensor.silent") == [{"sensor": "s1", "last": T0 + 90}]
        await h.advance(600)
        assert len(emitted(h, "sensor.silent")) == 1


async def test_a_raising_where_dead_letters_and_late_events_are_counted(make: Make) -> None:
    app = ov.App("strict")
    late: list[int] = []

    def positive(event: ov.Event) -> bool:
        return bool(event.data["amount"] > 0)  # KeyError without "amount"

    @app.pattern(
        ov.begin("a", where=positive).followed_by("b"),
        key="k",
        time_field="at",
        idle=None,
        on_late=lambda e: late.append(e.data["i"]),
    )
    def ab(match: ov.Match) -> ov.Event:
        return ov.Event.of("ab", {"k": match.key})

    async with make(app) as h:
        h.client.send(ov.Event.of("a", {"k": "x", "at": T0}))  # where raises
        h.client.send(ov.Event.of("a", {"k": "x", "amount": 1, "at": T0 + 1}))
        h.client.send(ov.Event.of("b", {"k": "x", "at": T0 + 5}))
        h.client.send(ov.Event.of("b", {"k": "x", "i": 7, "at": T0 + 2}))  # behind: late
        await h.idle()
        letters = h.client.dead_letters()
        assert len(letters) == 1 and "where of stage 0 failed: KeyError" in letters[0].reason
        assert emitted(h, "ab") == [{"k": "x"}]
        assert late == [7] and h.client.late_events("ab") == 1


@pytest.mark.parametrize(
    ("skip", "expected"), [(False, [(1, 4), (2, 5), (3, 7)]), (True, [(1, 4), (6, 7)])]
)
async def test_skip_past_last_makes_a_burst_one_match(
    make: Make, skip: bool, expected: list[tuple[int, int]]
) -> None:
    def app_of(skip: bool) -> ov.App:
        app = ov.App("bursts")
        pattern = ov.begin("a").followed_by("b").within(timedelta(seconds=10))

        @app.pattern(pattern.skip_past_last() if skip else pattern, key="k", time_field="at")
        def ab(match: ov.Match) -> ov.Event:
            a, b = match["a"][0], match["b"][0]
            return ov.Event.of("ab", {"a": a.data["n"], "b": b.data["n"]})

        return app

    # a1 a2 a3 b4 b5 a6 b7: by default each b takes the oldest waiting a; skipping past
    # the last event, a match drops every other partial match (a2, a3), so b5 finds none
    events = [("a", 1), ("a", 2), ("a", 3), ("b", 4), ("b", 5), ("a", 6), ("b", 7)]
    async with make(app_of(skip)) as h:
        for kind, n in events:
            h.client.send(ov.Event.of(kind, {"k": "x", "n": n, "at": T0 + n}))
        await h.idle()
        assert [(e["a"], e["b"]) for e in emitted(h, "ab")] == expected


def test_skip_past_last_is_refused_for_an_absence() -> None:
    absence = ov.begin("a").not_followed_by("b").within(timedelta(seconds=1))
    with pytest.raises(ov.ConfigError, match="skip_past_last is for patterns completed"):
        absence.skip_past_last()
    with pytest.raises(ov.ConfigError, match="skip_past_last is for patterns completed"):
        ov.begin("a").skip_past_last().not_followed_by("b")
