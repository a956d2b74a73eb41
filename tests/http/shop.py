"""The app the HTTP API tests serve (importable as ``tests.http.shop:app`` by the
subprocesses of the end-to-end tests, run from the repository's root)."""

from __future__ import annotations

import overture as ov

app = ov.App("httpshop")


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int


class Approved(ov.Event, type="order.approved", key="order_id"):
    order_id: str


class Noted(ov.Event, type="note.added"):
    text: str


@app.process(trigger=OrderPlaced, key=lambda e: e.order_id, waits=[Approved])
async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, object]:
    """Finishes at once for small orders; a large one waits for its approval."""
    if order.quantity > 100:
        await ctx.wait_for(Approved, key=order.order_id)
    return {"order": order.order_id, "shipped": order.quantity}


@app.on(Noted)
async def noted(event: Noted) -> None:
    if event.text == "fail":
        raise ov.TerminalError("refused note")
