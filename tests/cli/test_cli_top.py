"""``overture top``: one frame (``--once``) shows what the store holds: instances by
process and status, the last minute's completions and failures, dead letters by source."""

from __future__ import annotations

from cli_helpers import Invoke, ok

import overture as ov
from overture.cli.top import Frames
from overture.testing import Harness


def _app() -> ov.App:
    app = ov.App("topapp")

    class Ordered(ov.Event, type="order.made", key="order_id"):
        order_id: str
        fail: bool = False

    @app.process(trigger=Ordered)
    async def fulfil(ctx: ov.Context, order: Ordered) -> str:
        if order.fail:
            raise ov.TerminalError("refused")
        return order.order_id

    @app.on(Ordered)
    async def audit(order: Ordered) -> None:
        if order.order_id == "o-poison":
            raise ov.TerminalError("poison")

    return app


async def test_once_prints_counts_recent_activity_and_dead_letters(
    invoke: Invoke, url: str
) -> None:
    async with Harness(_app(), url) as h:
        for n in range(3):
            h.client.send("order.made", {"order_id": f"o-{n}"})
        h.client.send("order.made", {"order_id": "o-bad", "fail": True})
        h.client.send("order.made", {"order_id": "o-poison"})
        await h.idle()
        h.client.send_raw(b"not json at all")
        await h.idle()

    shown = ok(invoke("top", "--once"))
    assert "instances by status" in shown
    [row] = [line for line in shown.splitlines() if "fulfil" in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    statuses = [str(s) for s in ov.Status]
    # o-0..2 and o-poison completed (only o-poison's handler failed), o-bad failed
    assert dict(zip(["process", *statuses, "total"], cells, strict=True)) == {
        "process": "fulfil", "running": "-", "waiting": "-", "completed": "4", "failed": "1",
        "cancelled": "-", "stuck": "-", "total": "5",
    }  # fmt: skip
    summary = {
        line.split("  ")[0].strip(): line.split()[-1]
        for line in shown.splitlines()
        if "last minute" in line or "completed now" in line
    }
    assert summary == {"completed now": "-", "completed, last minute": "4",
                       "failed, last minute": "1"}  # fmt: skip
    [decode] = [line for line in shown.splitlines() if "decode" in line]
    [handler] = [line for line in shown.splitlines() if "handler:" in line]
    assert decode.strip("│ ").split("│")[-1].strip() == "1"
    assert handler.strip("│ ").split("│")[-1].strip() == "1" and "audit" in handler


async def test_the_rate_is_the_change_between_two_frames(url: str) -> None:
    async with Harness(_app(), url) as h:
        frames = Frames(h.client)
        frames.frame()
        h.client.send("order.made", {"order_id": "o-1"})
        await h.idle()
        shown = frames.frame()
        [summary] = [p for p in shown.renderables if hasattr(p, "columns")][:1]
        rate = str(summary.columns[1]._cells[0])
        assert rate.endswith("/s") and float(rate[:-2].replace(",", "")) > 0
