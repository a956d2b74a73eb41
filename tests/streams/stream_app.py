"""The app the streams crash tests run in a real ``overture run`` process: ticks counted
per key in 10-second tumbling windows, each closed window emitting one event."""

from __future__ import annotations

from datetime import timedelta

import overture as ov

from ..engine_process import pace

app = ov.App("ticks")


class Tick(ov.Event, type="tick"):
    sensor: str
    at: float


@app.window(
    source=Tick,
    key="sensor",
    window=ov.Tumbling(timedelta(seconds=10)),
    aggregate={"n": ov.Count()},
    time_field="at",
    idle=None,
)
def counts(result: ov.WindowResult) -> ov.Event:
    pace()  # (a crash test's, tests/engine_process.py)
    return ov.Event.of(
        "window.counted",
        {"key": result.key, "start": result.start.timestamp(), "n": result.values["n"]},
    )
