"""The app the pattern crash test runs in a real ``overture run`` process: per key, each
``order.opened`` followed by an ``order.closed`` is one match, emitting one event."""

from __future__ import annotations

import os
import time

import overture as ov

PACE = "OVERTURE_TEST_PACE"
"""Seconds the callback sleeps per result, so a crash test's kills land mid-stream
however fast the machine (the engine would otherwise finish between two of its reads)."""

app = ov.App("pairs")


@app.pattern(ov.begin("order.opened").followed_by("order.closed"), key="k", idle=None)
def pairs(match: ov.Match) -> ov.Event:
    time.sleep(float(os.environ.get(PACE, "0")))
    opened, closed = match["order.opened"][0], match["order.closed"][0]
    return ov.Event.of(
        "order.paired", {"k": match.key, "opened": opened.data["i"], "closed": closed.data["i"]}
    )
