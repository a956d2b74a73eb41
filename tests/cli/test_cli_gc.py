"""``overture gc``: retention passes on demand on SQLite (as a subprocess, killed -9
halfway through, refused beside a running engine), a report of what is pending on Kafka."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cli_helpers import Invoke, failed, ok, spawn
from tests.conftest import kafka_url

import overture as ov
from overture.backends import open_backend
from overture.runtime.clock import SystemClock
from overture.runtime.options import EngineOptions
from overture.testing import Harness


def app() -> ov.App:
    shop = ov.App("shop")

    @shop.process(trigger="order.placed", key=lambda e: e.data["id"])
    async def fulfil(ctx: ov.Context, order: ov.Event) -> str:
        if order.data["id"].startswith("wait"):
            await ctx.wait_for("order.paid", timeout=timedelta(days=30))
        return "x" * 2000  # a result big enough for the file to shrink visibly

    return shop


async def fill(url: str, n: int, *, waiting: int = 0) -> None:
    """``n`` finished instances, ``waiting`` live ones and one dead letter, on the wall
    clock (gc judges age by it), kept by the engine (retention forever)."""
    options = EngineOptions(retention=None)
    async with Harness(app(), url, clock=SystemClock(), options=options) as h:
        ids = [f"o{i}" for i in range(n)] + [f"wait{i}" for i in range(waiting)]
        h.client.send_many([ov.Envelope(type="order.placed", data={"id": i}) for i in ids])
        h.client.send_raw(b"junk")
        await h.idle()


def run(*args: str) -> tuple[int, str, str]:
    proc = spawn(*args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("instances", "journal", "log", "dlq", "waits")
        }
    finally:
        conn.close()


def half_deleted(db: Path) -> list[str]:
    """Instances with a journal but no row, or a row but no journal."""
    conn = sqlite3.connect(db)
    try:
        return [
            r[0]
            for r in conn.execute(
                "SELECT instance_id FROM journal WHERE instance_id NOT IN "
                "(SELECT id FROM instances) UNION SELECT id FROM instances WHERE id NOT IN "
                "(SELECT instance_id FROM journal)"
            )
        ]
    finally:
        conn.close()


async def test_gc_deletes_what_is_past_the_retention_and_prints_it(tmp_path: Path) -> None:
    db = tmp_path / "gc.db"
    url = f"sqlite:///{db}"
    await fill(url, 1000, waiting=3)
    code, out, err = run("gc", "--retention", "1h", "--json", "--backend", url)
    assert code == 0, err
    assert json.loads(out)["instances"] == 0  # nothing is an hour old
    before = counts(db)

    code, out, err = run("gc", "--retention", "0", "--backend", url)
    assert code == 0, err
    assert "instances deleted            1,000" in out
    assert "log events deleted           1,000" in out  # the finished ones' triggers
    assert "dead letters deleted             0" in out  # kept: no --dlq-retention
    after = counts(db)
    assert after["instances"] == 3 and after["waits"] == 3  # the live ones stay
    assert after["log"] == before["log"] - 1000 and after["dlq"] == 1
    file_line = next(line for line in out.splitlines() if line.strip().startswith("file"))
    old, new = (int(x.replace(",", "")) for x in file_line.split()[1:4:2])
    assert new < old / 2 and db.stat().st_size == new  # the freed pages went back
    with ov.Client(url) as client:  # remembered for one more retention (0 here: gone)
        assert len(client.instances()) == 3

    code, out, err = run(
        "gc", "--retention", "0", "--dlq-retention", "0", "--json", "--backend", url
    )
    assert code == 0, err
    assert json.loads(out)["dead_letters"] == 1 and counts(db)["dlq"] == 0


async def test_gc_refuses_while_an_engine_runs(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    url = f"sqlite:///{db}"
    await fill(url, 10)
    backend = open_backend(url)
    release = backend.engine_lock()  # what a running engine holds
    try:
        code, _, err = run("gc", "--retention", "0", "--backend", url)
    finally:
        release()
        backend.close()
    assert code == 1
    assert "an engine is running on" in err and "gc runs only with the engine stopped" in err
    assert counts(db)["instances"] == 10  # nothing deleted


def test_gc_usage(invoke: Invoke) -> None:
    assert "--retention 'soon' is not a retention" in failed(
        invoke("gc", "--retention", "soon"), code=2
    )
    assert "--dlq-retention 'x' is not a retention" in failed(
        invoke("gc", "--dlq-retention", "x"), code=2
    )
    refused = failed(invoke("gc", "--backend", "memory://x", backend=False), code=2)
    assert "memory://x keeps events in this one process" in refused


async def test_gc_vacuum_converts_a_file_from_before_auto_vacuum(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)  # an older release's file: auto_vacuum NONE
    conn.execute("CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    conn.close()
    url = f"sqlite:///{db}"
    await fill(url, 200)
    code, out, err = run("gc", "--retention", "0", "--backend", url)
    assert code == 0, err
    assert "predates auto_vacuum=INCREMENTAL" in out and "overture gc --vacuum" in out
    code, out, err = run("gc", "--retention", "0", "--vacuum", "--json", "--backend", url)
    assert code == 0, err
    report = json.loads(out)
    assert report["vacuumed"] and report["auto_vacuum"]
    assert report["file_after"] < report["file_before"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()


async def test_kill_9_in_the_middle_of_gc_leaves_nothing_half_deleted(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    url = f"sqlite:///{db}"
    await fill(url, 4000)
    await asyncio.to_thread(kill_while_collecting, db, url)


def kill_while_collecting(db: Path, url: str) -> None:
    left = [4000]
    for delay in (0.0, 0.01, 0.03):
        proc = spawn("gc", "--retention", "0", "--backend", url)
        deadline = time.monotonic() + 60
        # kill it once its passes have begun (a pass committed), a little later each time
        while counts(db)["instances"] == left[-1] and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert half_deleted(db) == []
        left.append(counts(db)["instances"])
    assert any(0 < n < 4000 for n in left), left  # killed halfway at least once
    code, _, err = run("gc", "--retention", "0", "--backend", url)  # finishes the job
    assert code == 0, err
    assert counts(db)["instances"] == 0 and half_deleted(db) == []


async def test_on_kafka_gc_reports_what_is_pending_and_deletes_nothing(
    request: pytest.FixtureRequest,
) -> None:
    url = kafka_url(request.getfixturevalue("kafka_bootstrap"), partitions=1)
    await fill(url, 3)
    out = ok(Invoke(url)("gc", "--retention", "0", "--dlq-retention", "0"))
    assert "on Kafka gc deletes nothing" in out
    assert "finished instances older than 0s, pending: 3" in out
    assert "dead letters older than 0s, pending: 1" in out
    with ov.Client(url) as client:
        assert len(client.instances()) == 3
    assert "--vacuum is for an SQLite file" in failed(Invoke(url)("gc", "--vacuum"))
