"""The classic order saga, importable as ``examples.orders`` from the repository root.

The code lives in :mod:`overture.examples.orders` (it ships in the wheel, so that
``overture demo`` works from an install); this module re-exports it, so both
``overture run examples.orders:app`` (from a checkout) and
``overture run overture.examples.orders:app`` (anywhere) run the same app.
"""

from overture.examples.orders import (
    STOCK,
    OrderCancelled,
    OrderOutOfStock,
    OrderPlaced,
    OrderShipped,
    PaymentReceived,
    app,
    check_inventory,
    log,
    make_app,
    notify_customer,
    release,
    reserve,
    ship,
)

__all__ = [
    "STOCK",
    "OrderCancelled",
    "OrderOutOfStock",
    "OrderPlaced",
    "OrderShipped",
    "PaymentReceived",
    "app",
    "check_inventory",
    "log",
    "make_app",
    "notify_customer",
    "release",
    "reserve",
    "ship",
]
