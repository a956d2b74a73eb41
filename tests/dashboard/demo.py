"""The demo app the dashboard tests serve (importable as ``tests.dashboard.demo:app`` by
the ``overture run --http`` subprocess of the browser test, run from the repository's
root): a saga with a retried step, a wait with a deadline, an emitted event that starts a
second process, compensations on cancel, and a handler that parks dead letters."""

from __future__ import annotations

from datetime import timedelta

import overture as ov

app = ov.App("dashdemo")

_flaky_seen: set[str] = set()
"""Orders whose ``charge`` step already failed once (the first attempt of each fails)."""


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int


class Approved(ov.Event, type="order.approved", key="order_id"):
    order_id: str


class Shipped(ov.Event, type="order.shipped", key="order_id"):
    order_id: str


class Note(ov.Event, type="note.added"):
    text: str


def reserve(order_id: str) -> str:
    return f"res-{order_id}"


def release(reservation: str) -> None:
    """The compensation of :func:`reserve`."""


def charge(order_id: str) -> str:
    """Fails its first attempt for every order (the timeline shows the retry)."""
    if order_id not in _flaky_seen:
        _flaky_seen.add(order_id)
        raise RuntimeError("card network timeout")
    return f"ch-{order_id}"


@app.process(trigger=OrderPlaced, key="order_id", name="fulfil", waits=[Approved], emits=[Shipped])
async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, object]:
    """Reserve, charge (retried), wait for approval of a large order, ship."""
    reservation = await ctx.step(reserve, order.order_id)
    ctx.compensate_with(release, reservation)
    await ctx.step(
        charge,
        order.order_id,
        retry=ov.Retry(max_attempts=3, initial_interval=timedelta(milliseconds=50)),
    )
    if order.quantity > 100:
        await ctx.wait_for(Approved, key=order.order_id, timeout=timedelta(hours=1))
    ctx.emit(Shipped(order_id=order.order_id))
    return {"order": order.order_id, "shipped": order.quantity}


@app.process(trigger=Shipped, key="order_id", name="deliver")
async def deliver(ctx: ov.Context, shipped: Shipped) -> str:
    return f"delivered {shipped.order_id}"


_notes_refused: set[str] = set()


@app.on(Note)
async def noted(event: Note) -> None:
    """Refuses a note starting with "fail" the first time (it is dead-lettered); its
    replay goes through."""
    if event.text.startswith("fail") and event.text not in _notes_refused:
        _notes_refused.add(event.text)
        raise ov.TerminalError(f"refused note {event.text!r}")
