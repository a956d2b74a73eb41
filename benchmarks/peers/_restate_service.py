"""The Restate services for W1 and W2, as an ASGI app served by hypercorn (h2c).

``GET /_bench/waiting`` (answered by this wrapper, not by Restate) returns how many W2
instances have reached their promise in this process: the benchmark waits for all of them
before it sends the payments.
"""

from __future__ import annotations

import json
from typing import Any

import restate
from restate import Workflow, WorkflowContext, WorkflowSharedContext

WAITING: set[str] = set()

fulfil = Workflow("Fulfil")


async def check_inventory(item: str, quantity: int) -> bool:
    return quantity < 100


async def charge(order_id: str, quantity: int) -> str:
    return f"rcpt-{order_id}"


async def ship(order_id: str) -> str:
    return f"trk-{order_id}"


@fulfil.main(name="run")
async def run(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, str]:
    """W1: three sequential ctx.run blocks, then complete."""
    order_id = ctx.key()
    opts: Any = restate.RunOptions()
    in_stock = await ctx.run_typed("check_inventory", check_inventory, opts, "book", 1)
    if not in_stock:
        return {"outcome": "out_of_stock"}
    receipt = await ctx.run_typed("charge", charge, opts, order_id, 1)
    tracking = await ctx.run_typed("ship", ship, opts, order_id)
    return {"outcome": "shipped", "receipt": receipt, "tracking": tracking}


await_payment = Workflow("AwaitPayment")


@await_payment.main(name="run")
async def wait(ctx: WorkflowContext, order: dict[str, Any]) -> int:
    """W2: wait on the workflow's durable promise ``payment`` (the key is the order id)."""
    WAITING.add(ctx.key())
    amount: int = await ctx.promise("payment", type_hint=int).value()
    return amount


@await_payment.handler()
async def pay(ctx: WorkflowSharedContext, amount: int) -> None:
    await ctx.promise("payment", type_hint=int).resolve(amount)


_restate_app = restate.app(services=[fulfil, await_payment])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/_bench/waiting":
        body = json.dumps({"waiting": len(WAITING)}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await _restate_app(scope, receive, send)
