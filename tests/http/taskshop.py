"""The app of the task endpoint tests: a process that calls remote tasks no Python code
defines (an HTTP worker answers them), importable as ``tests.http.taskshop:app`` by the
subprocesses of the end-to-end tests, run from the repository's root."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import overture as ov

app = ov.App("taskshop")

QUEUE = "payments"


class Charge(ov.Event, type="charge.requested", key="order_id"):
    """Charge an order by calling ``task`` (the Node worker of examples/node knows
    ``payment.authorize``, ``payment.decline`` and ``sleep``)."""

    order_id: str
    amount: int = 1
    task: str = "payment.authorize"
    seconds: float = 0.0
    timeout: float | None = None


@app.process(trigger=Charge, key=lambda e: e.order_id)
async def charge(ctx: ov.Context, order: Charge) -> dict[str, Any]:
    """The task's output, or what its final failure said."""
    timeout = None if order.timeout is None else timedelta(seconds=order.timeout)
    try:
        output = await ctx.call(
            order.task,
            {"order_id": order.order_id, "amount": order.amount, "seconds": order.seconds},
            queue=QUEUE,
            timeout=timeout,
            retry=ov.Retry(max_attempts=3, initial_interval=timedelta(milliseconds=50)),
        )
    except ov.TaskFailed as failed:
        return {"failed": failed.error_type, "message": failed.message, "attempts": failed.attempts}
    return {"output": output}
