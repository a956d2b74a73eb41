"""Correlation (wait_for), buffering, timeouts and durable timers, across restarts."""

from __future__ import annotations

from datetime import datetime, timedelta

import overture as ov

from .conftest import Factory


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: int


def payment_app(timeout: timedelta | None = timedelta(minutes=30)) -> ov.App:
    app = ov.App("pay")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def await_payment(ctx: ov.Context, order: OrderPlaced) -> str:
        try:
            paid = await ctx.wait_for(PaymentReceived, timeout=timeout)
        except ov.WaitTimeout:
            return "timed out"
        assert isinstance(paid, PaymentReceived)
        return f"paid {paid.amount}"

    return app


async def test_wait_for_is_fed_by_the_correlated_event_only(harness: Factory) -> None:
    async with harness(payment_app()) as h:
        h.client.send(OrderPlaced(order_id="a"))
        h.client.send(OrderPlaced(order_id="b"))
        await h.idle()
        assert {i.status for i in h.client.instances()} == {"waiting"}
        h.client.send(PaymentReceived(order_id="b", amount=7))
        await h.idle()
        status = {i.key: (i.status, i.result) for i in h.client.instances()}
        assert status == {"a": ("waiting", None), "b": ("completed", "paid 7")}


async def test_wait_times_out_on_a_durable_timer(harness: Factory) -> None:
    async with harness(payment_app(timedelta(minutes=30))) as h:
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
        await h.advance(29 * 60)
        assert h.client.instances()[0].status == "waiting"
        await h.restart()  # the timer is durable
        await h.advance(61)
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "timed out")
        # a payment arriving after the timeout changes nothing
        h.client.send(PaymentReceived(order_id="a", amount=1))
        await h.idle()
        assert h.client.instances()[0].result == "timed out"


async def test_event_that_wins_the_race_cancels_the_timeout(harness: Factory) -> None:
    async with harness(payment_app(timedelta(seconds=10))) as h:
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
        h.client.send(PaymentReceived(order_id="a", amount=3))
        await h.idle()
        await h.advance(60)
        (instance,) = h.client.instances()
        assert instance.result == "paid 3"
        assert [e["k"] for e in h.client.journal(instance.id)].count("res") == 1


async def test_event_arriving_before_the_wait_is_buffered_for_the_instance(
    harness: Factory,
) -> None:
    app = ov.App("early")

    async def slow_prep(order_id: str) -> str:
        return order_id

    @app.process(trigger=OrderPlaced, key="order_id")
    async def proc(ctx: ov.Context, order: OrderPlaced) -> str:
        await ctx.sleep(timedelta(seconds=5))  # payment arrives during this sleep
        paid = await ctx.wait_for(PaymentReceived, timeout=timedelta(seconds=1))
        return f"paid {paid.amount}"

    async with harness(app) as h:
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
        h.client.send(PaymentReceived(order_id="a", amount=9))
        await h.idle()
        await h.restart()  # the buffered event is durable too
        await h.advance(5)
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "paid 9")


async def test_wait_with_explicit_key_and_untyped_event(harness: Factory) -> None:
    app = ov.App("keys")

    @app.process(trigger="shipment.requested")
    async def proc(ctx: ov.Context, event: ov.Event) -> object:
        got = await ctx.wait_for("carrier.assigned", key=event.data["carrier_ref"])
        return got.data

    async with harness(app) as h:
        h.client.send("shipment.requested", {"carrier_ref": "C-1"}, key="order-1")
        await h.idle()
        h.client.send("carrier.assigned", {"carrier": "DHL"}, key="order-1")  # wrong key
        h.client.send("carrier.assigned", {"carrier": "UPS"}, key="C-1")
        await h.idle()
        assert h.client.instances()[0].result == {"carrier": "UPS"}


async def test_durable_sleep_survives_restart(harness: Factory) -> None:
    app = ov.App("sleepy")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> list[str]:
        start = ctx.now()
        await ctx.sleep(timedelta(hours=1))
        return [start.isoformat(), ctx.now().isoformat()]

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(1800)
        assert h.client.instances()[0].status == "waiting"
        await h.restart()
        await h.idle()
        assert h.client.instances()[0].status == "waiting"  # the reload kept the due time
        await h.advance(1799.9)
        assert h.client.instances()[0].status == "waiting"
        await h.advance(0.1)
        (instance,) = h.client.instances()
        assert instance.status == "completed"
        start, end = (datetime.fromisoformat(t) for t in instance.result)
        assert end - start == timedelta(hours=1)


async def test_wait_timeout_survives_restart_at_its_due_time(harness: Factory) -> None:
    async with harness(payment_app(timeout=timedelta(minutes=30))) as h:
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
        await h.advance(600)
        await h.restart()
        await h.idle()
        assert h.client.instances()[0].status == "waiting"
        await h.advance(1199.9)
        assert h.client.instances()[0].status == "waiting"
        await h.advance(0.1)
        assert h.client.instances()[0].result == "timed out"


async def test_one_event_feeds_every_instance_waiting_on_its_key(harness: Factory) -> None:
    app = ov.App("broadcast")

    @app.process(trigger="watch")
    async def watcher(ctx: ov.Context, event: ov.Event) -> str:
        got = await ctx.wait_for("alarm", key="sensor-1")
        return str(got.data["level"])

    async with harness(app) as h:
        for i in range(3):
            h.client.send("watch", {"n": i}, key=f"w{i}")
        await h.idle()
        h.client.send("alarm", {"level": 5}, key="sensor-1")
        await h.idle()
        assert [i.result for i in h.client.instances()] == ["5", "5", "5"]
