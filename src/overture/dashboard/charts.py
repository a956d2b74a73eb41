"""The overview's chart: instances started, completed and failed per minute, as SVG
geometry (polylines over the last hour) for the template to draw."""

from __future__ import annotations

from dataclasses import dataclass

from ..ports import ActivityRow
from ..protocol import Status

WIDTH = 720
HEIGHT = 180
LEFT = 40
BOTTOM = 24
SERIES = ("started", str(Status.COMPLETED), str(Status.FAILED))


@dataclass(slots=True)
class Series:
    name: str
    points: str
    """The polyline's ``points`` attribute."""
    total: int


@dataclass(slots=True)
class Chart:
    series: list[Series]
    peak: int
    buckets: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM


def activity_chart(rows: list[ActivityRow], since: float, width: float, buckets: int) -> Chart:
    """Per-bucket counts as one polyline per series (empty buckets count 0)."""
    counts = {name: [0] * buckets for name in SERIES}
    for row in rows:
        index = round((row.start - since) / width)
        if 0 <= index < buckets:
            for name in SERIES:
                counts[name][index] += getattr(row, name)
    peak = max([1, *(max(values) for values in counts.values())])
    plot_w = WIDTH - LEFT - 10
    plot_h = HEIGHT - BOTTOM - 10
    series = []
    for name in SERIES:
        points = " ".join(
            f"{LEFT + plot_w * i / max(buckets - 1, 1):.1f},"
            f"{10 + plot_h - plot_h * value / peak:.1f}"
            for i, value in enumerate(counts[name])
        )
        series.append(Series(name, points, sum(counts[name])))
    return Chart(series, peak, buckets)
