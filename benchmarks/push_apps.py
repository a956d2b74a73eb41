"""W6's app and endpoint: W1 with its three steps as push tasks, POSTed to a local
HTTP endpoint (``endpoint``, a uvicorn app in its own process) by the worker inside
``overture run`` (``benchmarks/tasks_bench.py --workload w6``).

The endpoint's address and the signing secret come from the environment
(``OVERTURE_BENCH_PUSH_PORT``, ``OVERTURE_BENCH_PUSH_SECRET``), which the benchmark sets
for both processes; the endpoint checks every request's Standard Webhooks signature, as
a real one must.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from standardwebhooks import Webhook

import overture as ov

from .workloads import OrderPlaced

SECRET_ENV = "OVERTURE_BENCH_PUSH_SECRET"
PORT_ENV = "OVERTURE_BENCH_PUSH_PORT"
PORT = int(os.environ.get(PORT_ENV, "8791"))

app = ov.App("bench-w6")
for _name in ("check_inventory", "charge", "ship"):
    app.task(_name, url=f"http://127.0.0.1:{PORT}/{_name}", secret_env=SECRET_ENV)


@app.process(trigger=OrderPlaced, key="order_id")
async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, str]:
    in_stock = await ctx.call("check_inventory", {"item": order.item, "quantity": order.quantity})
    if not in_stock:
        return {"outcome": "out_of_stock"}
    receipt = await ctx.call("charge", {"order_id": order.order_id, "quantity": order.quantity})
    tracking = await ctx.call("ship", {"order_id": order.order_id})
    return {"outcome": "shipped", "receipt": str(receipt), "tracking": str(tracking)}


def _answer(task: str, data: dict[str, Any]) -> Any:
    if task == "check_inventory":
        return int(data["quantity"]) < 100
    if task == "charge":
        return f"rcpt-{data['order_id']}"
    return f"trk-{data['order_id']}"


async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The push endpoint (a bare ASGI app): verify the signature, answer with the
    task's output as JSON."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    try:
        _webhook().verify(body, headers)
    except Exception:
        await _reply(send, 401, b'"bad signature"')
        return
    request = orjson.loads(body)
    output = _answer(scope["path"].strip("/"), request["data"]["input"])
    await _reply(send, 200, orjson.dumps(output))


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


_hook: Webhook | None = None


def _webhook() -> Webhook:
    global _hook
    if _hook is None:
        _hook = Webhook(os.environ[SECRET_ENV])
    return _hook
