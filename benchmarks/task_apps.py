"""W5's app: W1 with its three steps as remote tasks (``ctx.call``), run by an
``overture worker`` process (``benchmarks/tasks_bench.py``)."""

from __future__ import annotations

from typing import Any

import overture as ov

from .workloads import OrderPlaced

app = ov.App("bench-w5")


@app.task("check_inventory")
async def check_inventory(data: dict[str, Any]) -> bool:
    return int(data["quantity"]) < 100


@app.task("charge")
async def charge(data: dict[str, Any]) -> str:
    return f"rcpt-{data['order_id']}"


@app.task("ship")
async def ship(data: dict[str, Any]) -> str:
    return f"trk-{data['order_id']}"


@app.process(trigger=OrderPlaced, key="order_id")
async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, str]:
    in_stock = await ctx.call("check_inventory", {"item": order.item, "quantity": order.quantity})
    if not in_stock:
        return {"outcome": "out_of_stock"}
    receipt = await ctx.call("charge", {"order_id": order.order_id, "quantity": order.quantity})
    tracking = await ctx.call("ship", {"order_id": order.order_id})
    return {"outcome": "shipped", "receipt": str(receipt), "tracking": str(tracking)}
