"""How quickly the dashboard's instance list answers on a large SQLite file.

``python -m benchmarks.dashboard_queries --rows 1000000`` fills a file with that many
instance rows (written straight into the ``instances`` table in one transaction, which
takes seconds rather than the hours an engine would need to start them), then times each
filter of the Instances page, twice: the store query alone (``Client.find_instances``)
and the whole page (``GET /ui/instances``, rendered by the API in-process over an ASGI
transport). Each is repeated and reported as median and max in milliseconds. Then the
same for the overview: its two store reads (``Client.instance_counts``, the per-minute
``Client.instance_activity`` of the last hour), the whole ``GET /ui/`` page and a
``GET /metrics`` scrape (whose store gauges read the same counts). The file is kept
(``--file``) so the fill happens once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from overture import App, Client
from overture.backends import open_backend
from overture.http import create_api

PROCESSES = ("fulfil", "refund", "onboard")
STATUSES = (
    ("completed", 0.80),
    ("failed", 0.05),
    ("waiting", 0.10),
    ("running", 0.04),
    ("cancelled", 0.009),
    ("stuck", 0.001),
)
START = 1_764_000_000.0
"""The first row's created time (Unix); rows are ~1 s apart on average."""


def fill(path: Path, rows: int, seed: int = 7) -> None:
    """A SQLite backend file with ``rows`` instance rows (the schema made by the backend)."""
    if path.exists():
        path.unlink()
    open_backend(f"sqlite:///{path}").close()
    rng = random.Random(seed)
    names = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    created = START
    batch: list[tuple[Any, ...]] = []
    with db:
        for n in range(rows):
            created += rng.expovariate(1.0)
            status = rng.choices(names, weights)[0]
            iid = f"{int(created * 1000):012x}{rng.getrandbits(80):020x}"
            batch.append(
                (
                    iid,
                    PROCESSES[n % 3],
                    1,
                    f"k-{n}",
                    status,
                    n % 8,
                    created,
                    created + rng.uniform(0.01, 5.0),
                    f"ev-{n}",
                    None,
                    None,
                    4,
                )
            )
            if len(batch) == 50_000:
                db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch)
                batch.clear()
        db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch)
    db.execute("ANALYZE")
    db.close()


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, max) wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), max(samples)


def cases(client: Client, rows: int) -> dict[str, dict[str, Any]]:
    """The filters timed: name -> keyword arguments of find_instances."""
    middle = datetime.fromtimestamp(START + rows / 2, UTC)
    page = client.find_instances(limit=50)
    deep = page
    for _ in range(20):  # the 21st page
        assert deep.cursor is not None
        deep = client.find_instances(limit=50, cursor=deep.cursor)
    some = page.instances[10]
    return {
        "newest 50": {},
        "page 21 (cursor)": {"cursor": deep.cursor},
        "process": {"process": "refund"},
        "status stuck (0.1%)": {"status": "stuck"},
        "status failed": {"status": "failed"},
        "key": {"key": f"k-{rows // 3}"},
        "time range (1 h, mid-file)": {
            "created_from": middle,
            "created_to": datetime.fromtimestamp(middle.timestamp() + 3600, UTC),
        },
        "search id prefix": {"search": some.id[:10]},
        "search key": {"search": f"k-{rows // 2}"},
        "process + status waiting": {"process": "onboard", "status": "waiting"},
    }


def _params(kwargs: dict[str, Any]) -> dict[str, str]:
    names = {"created_from": "from", "created_to": "to", "search": "q"}
    out = {}
    for k, v in kwargs.items():
        out[names.get(k, k)] = v.strftime("%Y-%m-%dT%H:%M:%S") if isinstance(v, datetime) else v
    return out


async def _page_times(
    url: str, all_cases: dict[str, dict[str, Any]], repeats: int
) -> dict[str, tuple[float, float]]:
    api = create_api(App("bench"), url)
    transport = httpx.ASGITransport(app=api)
    out = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        for name, kwargs in all_cases.items():
            params = _params(kwargs)
            params.pop("process", None)  # the bench app defines no process: the page refuses
            samples = []
            for i in range(repeats + 1):
                began = time.perf_counter()
                response = await http.get("/ui/instances", params=params)
                elapsed = (time.perf_counter() - began) * 1000
                assert response.status_code == 200, response.text[:500]
                if i:
                    samples.append(elapsed)
            out[name] = (statistics.median(samples), max(samples))
    return out


async def _overview_times(url: str, repeats: int) -> dict[str, tuple[float, float]]:
    api = create_api(App("bench"), url)
    transport = httpx.ASGITransport(app=api)
    out = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        for path in ("/ui/", "/metrics"):
            samples = []
            for i in range(repeats + 1):
                began = time.perf_counter()
                response = await http.get(path)
                elapsed = (time.perf_counter() - began) * 1000
                assert response.status_code == 200, response.text[:500]
                if i:
                    samples.append(elapsed)
            out[f"GET {path}"] = (statistics.median(samples), max(samples))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--file", type=Path, default=Path("/tmp/overture-dashboard-bench.db"))
    parser.add_argument("--refill", action="store_true", help="fill the file even if it exists")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    if args.refill or not args.file.exists():
        began = time.perf_counter()
        fill(args.file, args.rows)
        took = time.perf_counter() - began
        print(
            f"filled {args.file} with {args.rows:,} instances in {took:.1f} s "
            f"({os.path.getsize(args.file) / 1e6:.0f} MB)"
        )
    url = f"sqlite:///{args.file}"
    with Client(url) as client:
        all_cases = cases(client, args.rows)
        print(f"{'filter':32} {'store median':>13} {'store max':>10}")
        for name, kwargs in all_cases.items():
            median, worst = timed(
                lambda kw=kwargs: client.find_instances(limit=50, **kw), args.repeats
            )
            print(f"{name:32} {median:10.2f} ms {worst:7.2f} ms")
        # the overview's chart: the last hour of the file, per minute
        hour = datetime.fromtimestamp(START + args.rows - 3600, UTC)
        reads: dict[str, Callable[[], Any]] = {
            "instance_counts": client.instance_counts,
            "instance_activity (1 h/min)": lambda: client.instance_activity(
                since=hour, width=timedelta(minutes=1)
            ),
        }
        print(f"\n{'overview read':32} {'store median':>13} {'store max':>10}")
        for name, read in reads.items():
            median, worst = timed(read, args.repeats)
            print(f"{name:32} {median:10.2f} ms {worst:7.2f} ms")
    overview = asyncio.run(_overview_times(url, args.repeats))
    print(f"\n{'overview and scrape':32} {'median':>13} {'max':>10}")
    for name, (median, worst) in overview.items():
        print(f"{name:32} {median:10.2f} ms {worst:7.2f} ms")
    pages = asyncio.run(_page_times(url, all_cases, args.repeats))
    print(f"\n{'GET /ui/instances (whole page)':32} {'median':>13} {'max':>10}")
    for name, (median, worst) in pages.items():
        print(f"{name:32} {median:10.2f} ms {worst:7.2f} ms")


if __name__ == "__main__":
    main()
