"""cProfile summaries restricted to Overture's own code.

``python -m benchmarks --profile DIR`` writes, per load measurement, ``DIR/<unit>.prof``
(the engine's event-loop thread) and, for SQLite, ``DIR/<unit>.prof.commit`` (the thread
that runs ``Store.commit``; cProfile only sees the thread it is enabled in). This module
merges them and lists the top functions under ``src/overture`` by cumulative time::

    python -m benchmarks.profiling DIR/w1-load-sqlite-r1.prof [-n 15]
"""

from __future__ import annotations

import argparse
import os
import pstats
from dataclasses import dataclass

_INSIDE = os.sep + os.path.join("src", "overture") + os.sep


@dataclass(frozen=True, slots=True)
class Line:
    function: str  # "path/inside/overture.py:line(name)"
    calls: int
    tottime: float
    cumtime: float


def load(path: str) -> pstats.Stats:
    """The profile at ``path`` merged with its ``.commit`` companion, if any."""
    merged = pstats.Stats(path)
    if os.path.exists(path + ".commit"):
        merged.add(path + ".commit")
    return merged


def top(path: str, limit: int = 15, inside: str = _INSIDE) -> tuple[float, list[Line]]:
    """(total seconds profiled, top ``limit`` functions under ``inside`` by cumulative time)."""
    profile = load(path)
    raw = profile.stats  # type: ignore[attr-defined]
    lines = []
    for (filename, lineno, name), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        if inside in filename:
            short = filename.split(inside, 1)[1]
            lines.append(Line(f"{short}:{lineno}({name})", calls, tottime, cumtime))
    lines.sort(key=lambda line: line.cumtime, reverse=True)
    return profile.total_tt, lines[:limit]  # type: ignore[attr-defined]


def format_top(path: str, limit: int = 15) -> str:
    total, lines = top(path, limit)
    out = [f"{os.path.basename(path)}: {total:.3f} s profiled (main + commit threads)"]
    out.append(f"{'cumtime':>9} {'tottime':>9} {'calls':>8}  function (src/overture/...)")
    for line in lines:
        out.append(f"{line.cumtime:9.3f} {line.tottime:9.3f} {line.calls:8d}  {line.function}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+")
    parser.add_argument("-n", type=int, default=15)
    args = parser.parse_args()
    for path in args.profiles:
        print(format_top(path, args.n))
        print()


if __name__ == "__main__":
    main()
