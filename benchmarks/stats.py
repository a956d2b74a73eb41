"""Small statistics helpers (no numpy)."""

from __future__ import annotations

import math
import resource
import statistics
import sys
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(clean)) if clean else math.nan


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children), in MiB.

    ``ru_maxrss`` is in KiB on Linux (bytes on macOS).
    """
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``; elsewhere the
    peak, which is all ``resource`` offers)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
    return pages * resource.getpagesize() / (1024 * 1024)


def cpu_seconds() -> float:
    """User + system CPU time used so far by this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ms(seconds: float) -> float:
    return seconds * 1000.0
