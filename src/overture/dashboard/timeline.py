"""An instance's journal as a picture: the rows and bars of its SVG timeline.

The geometry is computed here from plain journal entries (see ``overture.core.journal``);
the template only draws it, so every name and message it shows goes through Jinja2's
autoescaping. A ``cmd`` entry has no time of its own: an operation starts at the time of
the entry journaled before it (the input that let the code run on to it) and ends at its
``res``; an operation still pending ends at "now" and is drawn open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..core import journal as jr

WIDTH = 960
"""The picture's width in SVG units (it scales to the page)."""
LABEL = 260
"""The width of the label column left of the time axis."""
ROW = 26
TOP = 34
"""Room above the first row for the time axis."""
COMPENSATION = "compensate:"
"""The name prefix of the steps a saga's compensations run as (``MachineContext``)."""


@dataclass(slots=True)
class Mark:
    """A point on a bar: a failed attempt that was retried."""

    x: float
    title: str


@dataclass(slots=True)
class Bar:
    """One row of the timeline: an operation (a bar) or a moment (a zero-length bar)."""

    label: str
    kind: str
    """trigger | step | call | wait | sleep | emit | compensation | cancel | end"""
    start: float
    end: float | None
    """``None`` while the operation is pending."""
    outcome: str
    """ok | error | pending | info"""
    detail: str
    event_id: str | None = None
    marks: list[Mark] = field(default_factory=list)
    x: float = 0.0
    width: float = 0.0
    y: float = 0.0

    @property
    def duration(self) -> str:
        if self.end is None:
            return "pending"
        return seconds(self.end - self.start)


@dataclass(slots=True)
class Tick:
    x: float
    text: str


@dataclass(slots=True)
class Timeline:
    bars: list[Bar]
    ticks: list[Tick]
    height: float
    start: str = ""
    """When the first entry happened (the axis counts from it)."""
    width: int = WIDTH
    label: int = LABEL


def seconds(span: float) -> str:
    """A duration for people: ``840 ms``, ``3.2 s``, ``4 min 10 s``, ``2 h 5 min``."""
    if span < 1:
        return f"{span * 1000:.0f} ms"
    if span < 60:
        return f"{span:.1f} s"
    if span < 3600:
        return f"{int(span // 60)} min {int(span % 60)} s"
    return f"{int(span // 3600)} h {int(span % 3600 // 60)} min"


def build(entries: list[jr.Entry], now: float) -> Timeline:
    """The timeline of a journal (``now``: where pending operations end)."""
    bars: list[Bar] = []
    pending: dict[int, Bar] = {}
    last = now
    compensating = False
    for entry in entries:
        kind = entry.get("k")
        t = entry.get("t")
        if isinstance(t, int | float):
            last = float(t)
        if kind == "start":
            trigger = entry.get("ev") or {}
            bars.append(
                Bar(
                    f"trigger {trigger.get('type', '?')}",
                    "trigger",
                    last,
                    last,
                    "info",
                    f"event {trigger.get('id', '?')}",
                    event_id=trigger.get("id"),
                )
            )
        elif kind == "cmd":
            op, name, seq = entry.get("op", "?"), str(entry.get("n", "?")), entry.get("s")
            bar = _operation(entry, op, name, last, compensating)
            if op == "emit" or op == "abandon":
                bar.end = last
                bar.outcome = "info"
            elif isinstance(seq, int):
                pending[seq] = bar
            bars.append(bar)
        elif kind == "res":
            bar_or_none = pending.pop(entry.get("s", -1), None)
            if bar_or_none is not None:
                bar_or_none.end = last
                if "err" in entry:
                    err = entry["err"]
                    bar_or_none.outcome = "error"
                    bar_or_none.detail += f" failed: {err.get('type')}: {err.get('message')}"
                else:
                    bar_or_none.outcome = "ok"
                    bar_or_none.detail += f" returned {_short(entry.get('ok'))}"
        elif kind == "retry":
            bar_or_none = pending.get(entry.get("s", -1))
            if bar_or_none is not None:
                bar_or_none.marks.append(Mark(last, jr.describe(entry)))
        elif kind == "cancel":
            compensating = True
            bars.append(Bar("cancel requested", "cancel", last, last, "info", "cancel requested"))
        elif kind == "end":
            status = str(entry.get("st"))
            bars.append(
                Bar(
                    status,
                    "end",
                    last,
                    last,
                    "ok" if status == "completed" else "error",
                    jr.describe(entry),
                )
            )
    return _layout(bars, now)


def _operation(entry: jr.Entry, op: str, name: str, start: float, cancelling: bool) -> Bar:
    seq = entry.get("s")
    if op == "wait":
        key = entry.get("key")
        detail = f"#{seq} wait for {name} " + ("keyless" if key is None else f"key={key}")
        if entry.get("due") is not None:
            detail += f", deadline {_when(entry['due'])}"
        return Bar(f"wait {name}", "wait", start, None, "pending", detail)
    if op == "sleep":
        due = entry.get("due")
        detail = f"#{seq} sleep" + ("" if due is None else f" until {_when(due)}")
        return Bar("sleep", "sleep", start, None, "pending", detail)
    if op == "emit":
        ev = entry.get("ev")
        return Bar(f"emit {name}", "emit", start, start, "info", f"#{seq} emit {name}", ev)
    if op == "abandon":
        return Bar(f"abandon {name}", "abandon", start, start, "info", f"#{seq} abandon {name}")
    if name.startswith(COMPENSATION) or (cancelling and op == "step"):
        label = name.removeprefix(COMPENSATION)
        return Bar(f"compensate {label}", "compensation", start, None, "pending", f"#{seq} {name}")
    kind = "call" if op == "call" else "step"
    return Bar(
        f"{'task' if op == 'call' else 'step'} {name}",
        kind,
        start,
        None,
        "pending",
        f"#{seq} {op} {name}",
    )


def _layout(bars: list[Bar], now: float) -> Timeline:
    if not bars:
        return Timeline([], [], TOP + ROW)
    first = min(b.start for b in bars)
    last = max(max(b.start, b.end if b.end is not None else now) for b in bars)
    span = max(last - first, 1e-3)
    scale = (WIDTH - LABEL - 20) / span

    def x_of(t: float) -> float:
        return LABEL + (t - first) * scale

    for row, bar in enumerate(bars):
        bar.x = x_of(bar.start)
        end = bar.end if bar.end is not None else now
        bar.width = max(x_of(end) - bar.x, 3.0)
        bar.y = TOP + row * ROW
        for mark in bar.marks:
            mark.x = x_of(mark.x)
    ticks = [Tick(x_of(first + span * i / 4), "+" + seconds(span * i / 4)) for i in range(5)]
    return Timeline(bars, ticks, TOP + len(bars) * ROW + 10, start=_when(first))


def _when(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError):
        return str(t)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
