"""``waits=`` / ``emits=``: an app knows every event class its processes use, so sending a
waited-for type by name validates it and derives its key, and a keyless one is refused
instead of being silently never delivered."""

from __future__ import annotations

import logging

import pytest

import overture as ov

from .conftest import Factory


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: int


class OrderShipped(ov.Event, type="order.shipped", key="order_id"):
    order_id: str


class Refund(ov.Event, type="refund", key="order_id"):
    order_id: str | None = None


class Ping(ov.Event, type="ping"):  # no key field
    note: str


def shop() -> ov.App:
    app = ov.App("shop")

    @app.process(
        trigger=OrderPlaced,
        key="order_id",
        waits=[PaymentReceived, Refund, "ping"],
        emits=[OrderShipped],
    )
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        paid = await ctx.wait_for(PaymentReceived)
        ctx.emit(OrderShipped(order_id=order.order_id))
        return f"paid {paid.amount}"

    return app


def test_declared_classes_are_known() -> None:
    app = shop()
    assert app.event_class("payment.received") is PaymentReceived
    assert app.event_class("order.shipped") is OrderShipped
    assert {"order.placed", "payment.received", "order.shipped", "ping"} <= set(app.event_types)
    assert app.waiters("payment.received") == ["fulfil"]
    assert app.waiters("order.shipped") == []
    [definition] = app.processes
    assert (definition.waits, definition.emits) == (
        ("payment.received", "refund", "ping"),
        ("order.shipped",),
    )


def test_a_declared_class_must_be_an_event_contract() -> None:
    app = ov.App("a")
    with pytest.raises(ov.ConfigError, match="not an Event subclass"):
        app.process(trigger=OrderPlaced, waits=[dict])  # type: ignore[list-item]


async def test_sending_a_waited_for_type_by_name_derives_its_key(harness: Factory) -> None:
    async with harness(shop()) as h:
        h.client.send("order.placed", {"order_id": "o1"})
        await h.idle()
        h.client.send("payment.received", {"order_id": "o1", "amount": 5})
        await h.idle()
        [instance] = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "paid 5")
        [shipped] = h.client.events(type="order.shipped")
        assert shipped.envelope is not None and shipped.envelope.partitionkey == "o1"


async def test_a_waited_for_type_is_validated_and_a_keyless_one_refused(
    harness: Factory,
) -> None:
    async with harness(shop()) as h:
        with pytest.raises(ov.EventValidationError, match="amount"):
            h.client.send("payment.received", {"order_id": "o1", "amount": "lots"})
        with pytest.raises(ov.EventValidationError, match=r"no key.*fulfil.*'order_id'"):
            h.client.send("refund", {})
        with pytest.raises(ov.EventValidationError, match=r"no key.*fulfil.*'order_id'"):
            h.client.send(Refund(order_id=None))
        with pytest.raises(ov.EventValidationError, match=r"no key.*fulfil.*give it a key"):
            h.client.send("ping", {"note": "hi"})
        with pytest.raises(ov.EventValidationError, match="no key"):
            h.client.send(Ping(note="hi"))
        assert h.client.events() == []  # nothing was written
        h.client.send(Ping(note="hi"), key="o1")  # an explicit key is enough
        h.client.send("order.shipped", {"order_id": "x"})  # emitted, not waited for: fine
        assert len(h.client.events()) == 2


def test_a_none_key_field_is_no_key() -> None:
    assert Refund(order_id=None).partitionkey is None  # not the string "None"


async def test_the_engine_warns_once_about_an_undeclared_wait(
    harness: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    app = ov.App("loose")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def loose(ctx: ov.Context, order: OrderPlaced) -> str:
        await ctx.wait_for(PaymentReceived)
        return "paid"

    caplog.set_level(logging.WARNING, logger="overture.engine")
    async with harness(app) as h:
        h.client.send(OrderPlaced(order_id="a"))
        h.client.send(OrderPlaced(order_id="b"))
        await h.idle()
    warnings = [r.getMessage() for r in caplog.records if "without declaring" in r.getMessage()]
    assert warnings == [
        "process 'loose' waits for 'payment.received' without declaring it: add it to "
        "@app.process(waits=[...]) so that clients with the app (overture send --app) "
        "validate such events and derive their key"
    ]

    caplog.clear()
    async with harness(shop()) as h:  # declared: no warning
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
    assert not [r for r in caplog.records if "without declaring" in r.getMessage()]
