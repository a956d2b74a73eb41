"""The app of the cross-process tracing test (``tests.observe.tracedapp:app``, loaded by
``overture run`` and ``overture worker`` subprocesses): a process calling a task."""

from __future__ import annotations

from typing import Any

import overture as ov

app = ov.App("tracedapp")


@app.task("charge")
def charge(args: dict[str, Any]) -> dict[str, Any]:
    return {"charged": args["order"]}


@app.process(trigger="order.placed", key=lambda e: e.data["order"])
async def order(ctx: ov.Context, event: ov.Event) -> Any:
    return await ctx.call("charge", {"order": event.data["order"]})
