"""Data fields named like CloudEvents attributes (``id``, ``type``, ``time``, …) travel
through the engine as data, on every backend; the envelope keeps its own attributes."""

from __future__ import annotations

import overture as ov

from .conftest import Factory


class OrderCreated(ov.Event, type="order.created", key="id"):
    id: str
    type: str
    time: int


class PaymentMade(ov.Event, type="payment.made", key="id"):
    id: str
    type: str
    source: str


def shop(seen: list[tuple[str, str]]) -> ov.App:
    app = ov.App("names")

    @app.process(trigger=OrderCreated, key="id", waits=[PaymentMade])
    async def order(ctx: ov.Context, created: OrderCreated) -> str:
        paid = await ctx.wait_for(PaymentMade)
        assert paid.envelope.type == "payment.made"
        return f"{created.id} {created.type} {created.time} paid by {paid.type} via {paid.source}"

    @app.on(PaymentMade, name="record")
    async def record(event: PaymentMade) -> None:
        seen.append((event.id, event.envelope.type))

    return app


async def test_business_fields_named_like_attributes_are_data(harness: Factory) -> None:
    seen: list[tuple[str, str]] = []
    async with harness(shop(seen)) as h:
        h.client.send(OrderCreated(id="o1", type="express", time=7))
        await h.idle()
        h.client.send("payment.made", {"id": "o1", "type": "card", "source": "web"})
        await h.idle()
        [instance] = h.client.instances()
        assert instance.key == "o1"
        assert instance.result == "o1 express 7 paid by card via web"
        assert seen == [("o1", "payment.made")]
        [logged] = h.client.events(type="payment.made")
        assert logged.envelope is not None and logged.envelope.source == "overture"
