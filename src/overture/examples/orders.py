"""The classic order saga: check stock, reserve, wait for payment, ship or compensate.

Run it against the embedded database (it ships in the package, so this works from any
directory; from a checkout, ``examples.orders:app`` is the same app)::

    overture run overture.examples.orders:app
    overture send order.placed --data '{"order_id": "o-1", "item": "book", "quantity": 1}' \\
        --app overture.examples.orders:app
    overture send payment.received --data '{"order_id": "o-1", "amount": 12.5}' \\
        --app overture.examples.orders:app

``--app`` lets ``overture send`` validate the data and derive the correlation key from
``order_id`` (without it, pass ``--key o-1``). ``overture demo`` runs all the outcomes end
to end with a short payment timeout, built by :func:`make_app`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import overture as ov

log = logging.getLogger(__name__)

STOCK: dict[str, int] = {"book": 10, "lamp": 3, "unicorn": 0}
"""Items on hand. A plain table keeps the example deterministic; a real shop would call
its inventory service from the step."""


# -- event contracts -----------------------------------------------------------------------


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    """A customer placed an order (starts a ``fulfil_order`` instance)."""

    order_id: str
    item: str
    quantity: int


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    """The payment provider confirmed a payment for an order."""

    order_id: str
    amount: float


class OrderOutOfStock(ov.Event, type="order.out_of_stock", key="order_id"):
    """The order cannot be served: not enough stock."""

    order_id: str
    item: str


class OrderCancelled(ov.Event, type="order.cancelled", key="order_id"):
    """The order was given up; its reservation has been released."""

    order_id: str
    reason: str


class OrderShipped(ov.Event, type="order.shipped", key="order_id"):
    """The order left the warehouse."""

    order_id: str
    tracking: str


# -- steps (side effects live here; each runs at least once) ---------------------------------


def check_inventory(order: OrderPlaced) -> bool:
    """Whether enough stock is on hand for the order."""
    return STOCK.get(order.item, 0) >= order.quantity


def reserve(order: OrderPlaced) -> str:
    """Reserve the items; returns the reservation id (derived, so a retry reuses it)."""
    reservation = f"res-{order.order_id}"
    log.info("reserved %d x %s for order %s", order.quantity, order.item, order.order_id)
    return reservation


def release(order: OrderPlaced, reservation: str) -> None:
    """Compensation of :func:`reserve`: put the items back."""
    log.info("released reservation %s of order %s", reservation, order.order_id)


def ship(order: OrderPlaced) -> str:
    """Hand the order to the carrier; returns the tracking number."""
    return f"TRK-{order.order_id}"


async def notify_customer(event: OrderShipped) -> None:
    """Handler of ``order.shipped``: tell the customer (here, a log line)."""
    log.info("notification: order %s shipped, tracking %s", event.order_id, event.tracking)


# -- the application -------------------------------------------------------------------------


def make_app(payment_timeout: timedelta = timedelta(minutes=30)) -> ov.App:
    """Build the shop application.

    Args:
        payment_timeout: how long an order waits for its payment before it is cancelled
            and its reservation released (the demo uses a couple of seconds).
    """
    app = ov.App("shop")

    # waits= and emits= tell the app every event class the process uses, so that
    # `overture send --app` validates them and derives their key from order_id (and refuses
    # a keyless payment.received, which no waiting order could ever receive).
    @app.process(
        trigger=OrderPlaced,
        key="order_id",
        name="fulfil_order",
        waits=[PaymentReceived],
        emits=[OrderOutOfStock, OrderCancelled, OrderShipped],
    )
    async def fulfil_order(ctx: ov.Context, order: OrderPlaced) -> str:
        if not await ctx.step(check_inventory, order):
            ctx.emit(OrderOutOfStock(order_id=order.order_id, item=order.item))
            return "out_of_stock"
        reservation = await ctx.step(reserve, order)
        # Registered only once the reservation exists: nothing to undo before that.
        ctx.compensate_with(release, order, reservation)
        try:
            await ctx.wait_for(PaymentReceived, key=order.order_id, timeout=payment_timeout)
        except ov.WaitTimeout:
            await ctx.compensate()
            ctx.emit(OrderCancelled(order_id=order.order_id, reason="payment timeout"))
            return "cancelled"
        tracking = await ctx.step(ship, order)
        ctx.emit(OrderShipped(order_id=order.order_id, tracking=tracking))
        return "shipped"

    app.on(OrderShipped, name="notify_customer")(notify_customer)
    return app


app = make_app()
"""The application ``overture run examples.orders:app`` runs (30-minute payment timeout)."""
