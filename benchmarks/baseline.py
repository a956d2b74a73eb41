"""Raw SQLite baseline: the rows the engine writes per W1 instance, from plain sqlite3.

Per W1 instance the engine's SQLite backend ends up with one ``log`` row (the trigger,
appended by the producer), one ``instances`` row (INSERT OR REPLACE, with its two
indexes), and one ``journal`` row (the instance's whole journal as one JSON chunk,
because all three steps finish inside one engine batch); per engine commit it upserts one
``offsets`` row. The baseline writes exactly those rows, with the engine's own schema
and connection settings (WAL, synchronous=FULL, so one fsync per commit), to a file in
the same directory as the engine runs use:

* the log rows in transactions of ``chunk`` rows (the producer's ``send_many`` size), each
  starting with the ``max(id)`` lookup an appender needs to assign offsets;
* the state rows in transactions of ``batch`` instances (the engine's observed mean
  instances per commit in the W1-sqlite run of the same suite, else 100) with
  ``executemany``.

Row contents (event JSON, journal JSON, result) are built before the clock starts, from a
real W1 instance run once on a ``memory://`` engine, so the bytes have realistic sizes.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from typing import Any

import orjson

from overture.backends.sqlite.backend import _SCHEMA  # the engine's schema
from overture.backends.sqlite.files import connect as _connect  # and its settings
from overture.core.machine import instance_id_for
from overture.events import encode
from overture.testing import Harness

from .workloads import order, w1_app

_SHIFT = 40  # log rowid = partition << 40 | offset, as in the SQLite backend


async def _sample() -> tuple[Any, list[dict[str, Any]]]:
    """One real W1 instance row and its journal."""
    async with Harness(w1_app()) as h:
        h.client.send(order("sample"))
        await h.idle()
        row = h.backend.store.instances()[0]
        return row, h.backend.store.journal(row.id)


def fsync_rate(directory: str, count: int = 300) -> float:
    """Raw ``write 4 KiB + fsync`` operations per second in ``directory``."""
    path = os.path.join(directory, "fsync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = b"x" * 4096
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, block)
            os.fsync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)


def run_baseline(directory: str, n: int, chunk: int, batch: int) -> dict[str, Any]:
    row, journal = asyncio.run(_sample())
    result_blob = orjson.dumps(row.result)
    logs: list[tuple[str, bytes, str]] = []
    states: list[tuple[tuple[Any, ...], tuple[str, int, bytes]]] = []
    for i in range(n):
        envelope = order(f"o{i}").envelope
        value = encode(envelope)
        logs.append((envelope.partitionkey or "", value, envelope.id))
        entries = copy.deepcopy(journal)
        entries[0]["ev"] = envelope.to_dict()
        iid = instance_id_for(row.process, envelope)
        now = time.time()
        instance = (
            iid,
            row.process,
            row.version,
            envelope.partitionkey,
            row.status,
            0,
            now,
            now,
            envelope.id,
            result_blob,
            None,
            len(entries),
        )
        states.append((instance, (iid, 0, orjson.dumps(entries))))

    path = os.path.join(directory, "baseline.db")
    conn = _connect(path)
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("COMMIT")
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]

    commits = offsets = done = 0

    def commit_state(upto: int) -> None:
        nonlocal commits, offsets, done
        group = states[done:upto]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO offsets VALUES ('engine:bench-w1', 0, ?) "
            "ON CONFLICT(grp, part) DO UPDATE SET off = excluded.off",
            (upto,),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [s[0] for s in group],
        )
        conn.executemany("INSERT OR REPLACE INTO journal VALUES (?, ?, ?)", [s[1] for s in group])
        conn.execute("COMMIT")
        commits += 1
        offsets += 1
        done = upto

    start = time.perf_counter()
    for lo in range(0, n, chunk):  # the producer's appends ...
        part = logs[lo : lo + chunk]
        conn.execute("BEGIN IMMEDIATE")
        top = conn.execute("SELECT max(id) FROM log WHERE id >= 0 AND id < ?", (1 << _SHIFT,))
        base = (top.fetchone()[0] or -1) + 1
        ts = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO log(id, key, value, ts, event_id, etype) "
            "VALUES (?, ?, ?, ?, ?, 'order.placed')",
            [(base + j, key, value, ts, eid) for j, (key, value, eid) in enumerate(part)],
        )
        conn.execute("COMMIT")
        commits += 1
        while lo + len(part) - done >= batch:  # ... and the engine's commits, interleaved
            commit_state(done + batch)
    if done < n:
        commit_state(n)
    elapsed = time.perf_counter() - start
    conn.close()
    rows = 3 * n + offsets
    return {
        "durability": f"journal_mode={mode}, synchronous={_SYNC.get(sync, sync)}",
        "throughput": n / elapsed,
        "rows_per_s": rows / elapsed,
        "commits_per_s": commits / elapsed,
        "rows": rows,
        "commits": commits,
        "batch": batch,
        "chunk": chunk,
        "log_bytes_per_row": sum(len(v) for _, v, _ in logs) / n,
        "journal_bytes_per_row": sum(len(s[1][2]) for s in states) / n,
        "fsync_per_s": fsync_rate(directory),
    }


_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
