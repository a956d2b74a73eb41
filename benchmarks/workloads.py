"""The benchmark applications.

W1 (order process): each ``order.placed`` starts ``fulfil``, which runs three sequential
trivial async steps and completes.

W2 (wait for event): each ``order.placed`` starts ``await_payment``, which waits for the
``payment.received`` event with the order's id as correlation key, then completes.
"""

from __future__ import annotations

import overture as ov


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    item: str
    quantity: int


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: int


async def check_inventory(item: str, quantity: int) -> bool:
    return quantity < 100


async def charge(order_id: str, quantity: int) -> str:
    return f"rcpt-{order_id}"


async def ship(order_id: str) -> str:
    return f"trk-{order_id}"


def w1_app() -> ov.App:
    """W1: three sequential trivial steps per instance."""
    app = ov.App("bench-w1")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, str]:
        # (annotated: mypy cannot infer T through Context.step's Callable union)
        in_stock: bool = await ctx.step(check_inventory, order.item, order.quantity)
        if not in_stock:
            return {"outcome": "out_of_stock"}
        receipt: str = await ctx.step(charge, order.order_id, order.quantity)
        tracking: str = await ctx.step(ship, order.order_id)
        return {"outcome": "shipped", "receipt": receipt, "tracking": tracking}

    return app


def w2_app() -> ov.App:
    """W2: start, wait for the payment event keyed by the order id, complete."""
    app = ov.App("bench-w2")
    app.event(PaymentReceived)

    @app.process(trigger=OrderPlaced, key="order_id")
    async def await_payment(ctx: ov.Context, order: OrderPlaced) -> int:
        paid = await ctx.wait_for(PaymentReceived, key=order.order_id)
        return paid.amount

    return app


APPS = {"w1": w1_app, "w2": w2_app}


def order(key: str) -> OrderPlaced:
    return OrderPlaced(order_id=key, item="book", quantity=1)


def payment(key: str) -> PaymentReceived:
    return PaymentReceived(order_id=key, amount=42)


EVENTS = {"order": order, "payment": payment}
