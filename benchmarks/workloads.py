"""The benchmark applications.

W1 (order process): each ``order.placed`` starts ``fulfil``, which runs three sequential
trivial async steps and completes.

W1-sync: the same process with plain ``def`` steps (run in the engine's thread pool), as
most users write them. W1-inline: those ``def`` steps declared ``inline=True``.

W2 (wait for event): each ``order.placed`` starts ``await_payment``, which waits for the
``payment.received`` event with the order's id as correlation key, then completes.

W3 (fan-out): each ``user.signed_up`` runs three ``@app.on`` handlers and starts
``onboard``, a process with one trivial step.

W4 (timers): each ``reminder.set`` starts ``remind``, which sleeps ``hold +
sleep_seconds(key)`` (a durable timer; ``sleep_seconds`` is uniform in [1, 5) and
deterministic per key) and completes.

M1 (memory): each ``session.opened`` starts ``hold_open``, which waits for a
``session.closed`` event that is never sent.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import timedelta

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


def check_inventory_sync(item: str, quantity: int) -> bool:
    return quantity < 100


def charge_sync(order_id: str, quantity: int) -> str:
    return f"rcpt-{order_id}"


def ship_sync(order_id: str) -> str:
    return f"trk-{order_id}"


def _w1_def_steps(inline: bool) -> ov.App:
    app = ov.App("bench-w1")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, str]:
        in_stock: bool = await ctx.step(
            check_inventory_sync, order.item, order.quantity, inline=inline
        )
        if not in_stock:
            return {"outcome": "out_of_stock"}
        receipt: str = await ctx.step(charge_sync, order.order_id, order.quantity, inline=inline)
        tracking: str = await ctx.step(ship_sync, order.order_id, inline=inline)
        return {"outcome": "shipped", "receipt": receipt, "tracking": tracking}

    return app


def w1sync_app() -> ov.App:
    """W1-sync: W1 with plain ``def`` steps, each run in the engine's thread pool."""
    return _w1_def_steps(inline=False)


def w1inline_app() -> ov.App:
    """W1-inline: the same ``def`` steps declared ``inline=True`` (the engine's thread)."""
    return _w1_def_steps(inline=True)


def w2_app() -> ov.App:
    """W2: start, wait for the payment event keyed by the order id, complete."""
    app = ov.App("bench-w2")

    @app.process(trigger=OrderPlaced, key="order_id", waits=[PaymentReceived])
    async def await_payment(ctx: ov.Context, order: OrderPlaced) -> int:
        paid = await ctx.wait_for(PaymentReceived, key=order.order_id)
        return paid.amount

    return app


# -- W3: one event, three handlers and one process ---------------------------------------------


class UserSignedUp(ov.Event, type="user.signed_up", key="user_id"):
    user_id: str
    email: str


HANDLER_RUNS = [0]  # handler calls in this process (a sanity check: >= 3 per event)


async def provision(user_id: str) -> str:
    return f"home-{user_id}"


def w3_app() -> ov.App:
    """W3: three trivial async handlers and one one-step process per event."""
    app = ov.App("bench-w3")

    @app.on(UserSignedUp, name="welcome_email")
    async def welcome_email(event: UserSignedUp) -> None:
        HANDLER_RUNS[0] += 1

    @app.on(UserSignedUp, name="crm_sync")
    async def crm_sync(event: UserSignedUp) -> None:
        HANDLER_RUNS[0] += 1

    @app.on(UserSignedUp, name="metrics")
    async def metrics(event: UserSignedUp) -> None:
        HANDLER_RUNS[0] += 1

    @app.process(trigger=UserSignedUp, key="user_id")
    async def onboard(ctx: ov.Context, user: UserSignedUp) -> str:
        home: str = await ctx.step(provision, user.user_id)
        return home

    return app


# -- W4: durable timers ---------------------------------------------------------------------------


class ReminderSet(ov.Event, type="reminder.set", key="reminder_id"):
    reminder_id: str


def sleep_seconds(key: str) -> float:
    """The instance's sleep: uniform in [1, 5) s, a deterministic function of its key."""
    return 1.0 + 4.0 * (zlib.crc32(key.encode()) / 2**32)


def w4_app(hold: float = 0.0) -> ov.App:
    """W4: sleep ``hold + sleep_seconds(key)``, then complete. ``hold`` (the same for every
    instance of a run) leaves room for the idle-CPU window before the first timer is due."""
    app = ov.App("bench-w4")

    @app.process(trigger=ReminderSet, key="reminder_id")
    async def remind(ctx: ov.Context, reminder: ReminderSet) -> None:
        await ctx.sleep(timedelta(seconds=hold + sleep_seconds(reminder.reminder_id)))

    return app


# -- M1: instances waiting for an event that never comes -----------------------------------------


class SessionOpened(ov.Event, type="session.opened", key="session_id"):
    session_id: str


class SessionClosed(ov.Event, type="session.closed", key="session_id"):
    session_id: str


def m1_app() -> ov.App:
    """M1: wait (no timeout) for a ``session.closed`` that nobody sends."""
    app = ov.App("bench-m1")

    @app.process(trigger=SessionOpened, key="session_id", waits=[SessionClosed])
    async def hold_open(ctx: ov.Context, session: SessionOpened) -> None:
        await ctx.wait_for(SessionClosed, key=session.session_id)

    return app


APPS: dict[str, Callable[[], ov.App]] = {
    "w1": w1_app,
    "w1sync": w1sync_app,
    "w1inline": w1inline_app,
    "c1": w1_app,  # W1 observed from a client process (benchmarks/client_observed.py)
    "w2": w2_app,
    "w3": w3_app,
    "w4": w4_app,
    "m1": m1_app,
}


def order(key: str) -> OrderPlaced:
    return OrderPlaced(order_id=key, item="book", quantity=1)


def payment(key: str) -> PaymentReceived:
    return PaymentReceived(order_id=key, amount=42)


def signup(key: str) -> UserSignedUp:
    return UserSignedUp(user_id=key, email=f"{key}@example.com")


def reminder(key: str) -> ReminderSet:
    return ReminderSet(reminder_id=key)


def session(key: str) -> SessionOpened:
    return SessionOpened(session_id=key)


EVENTS: dict[str, Callable[[str], ov.Event]] = {
    "order": order,
    "payment": payment,
    "signup": signup,
    "reminder": reminder,
    "session": session,
}
