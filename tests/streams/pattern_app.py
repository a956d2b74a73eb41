"""The app the pattern crash test runs in a real ``overture run`` process: per key, each
``order.opened`` followed by an ``order.closed`` is one match, emitting one event."""

from __future__ import annotations

import overture as ov

from ..engine_process import pace

app = ov.App("pairs")


@app.pattern(ov.begin("order.opened").followed_by("order.closed"), key="k", idle=None)
def pairs(match: ov.Match) -> ov.Event:
    pace()  # (a crash test's, tests/engine_process.py)
    opened, closed = match["order.opened"][0], match["order.closed"][0]
    return ov.Event.of(
        "order.paired", {"k": match.key, "opened": opened.data["i"], "closed": closed.data["i"]}
    )
