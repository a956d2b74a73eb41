"""SQLite retention: the log's consumed records, the file's size over cycles.

Log records carry the wall-clock time of their append and are judged by the earlier of
the engine clock and the wall clock, so the log tests run with a retention of 0 (a
virtual clock cannot age the log)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from overture.backends.sqlite import backend as sqlite_backend
from overture.ports import Batch
from overture.runtime.clock import VirtualClock
from overture.testing import Harness

from .test_engine_retention import OrderPlaced, shop


def _clock() -> VirtualClock:
    return VirtualClock(time.time())


def _log(db: Path) -> list[tuple[int, str | None]]:
    with sqlite3.connect(db) as c:
        return list(c.execute("SELECT id, event_id FROM log ORDER BY id"))


async def test_consumed_old_log_records_go_but_not_a_live_trigger_nor_the_newest(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    async with Harness(shop(), f"sqlite:///{db}", retention=timedelta(0), clock=_clock()) as h:
        slow = h.client.send(OrderPlaced(order_id="slow"))  # stays waiting (its id)
        for n in range(30):
            h.client.send(OrderPlaced(order_id=f"o{n}"))
        await h.idle()
        await h.advance(61)  # the next pass (the log's are a minute apart)
        left = _log(db)
        assert slow in {event_id for _, event_id in left}  # a running instance's trigger
        with sqlite3.connect(db) as c:
            parts = {p for (p,) in c.execute("SELECT DISTINCT part FROM offsets")}
        assert len(left) <= 1 + len(parts)  # the trigger + at most the newest per partition
        # offsets go on from where they were: nothing appended reuses a deleted offset
        log = h.backend.log
        ends = [log.end_offset(p) for p in range(log.partitions)]
        assert sum(ends) == 31
        started = h.engine.stats["started"]
        h.client.send(OrderPlaced(order_id="later"))
        await h.idle()
        assert sum(log.end_offset(p) for p in range(log.partitions)) == 32
        assert h.engine.stats["started"] == started + 1  # read at its new offset, and run


async def test_a_group_that_has_not_read_a_record_keeps_it(tmp_path: Path) -> None:
    db = tmp_path / "group.db"
    async with Harness(shop(), f"sqlite:///{db}", retention=timedelta(0), clock=_clock()) as h:
        partitions = h.backend.log.partitions
        # another consumer of the log that has read nothing yet
        h.backend.store.commit(Batch("other", offsets=dict.fromkeys(range(partitions), 0)))
        for n in range(10):
            h.client.send(OrderPlaced(order_id=f"o{n}"))
        await h.idle()
        await h.advance(61)
        assert h.client.instances() == []  # the instances went
        assert len(_log(db)) == 10  # the log did not: "other" has not passed it


def _file_and_wal(db: Path) -> tuple[int, int]:
    wal = Path(f"{db}-wal")
    return db.stat().st_size, (wal.stat().st_size if wal.exists() else 0)


async def test_the_file_and_its_wal_stop_growing_once_retention_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's own tidying (incremental vacuum, PASSIVE checkpoints after passes)
    keeps the file and its WAL flat over repeated cycles with retention 0; nothing is
    done by hand."""
    # every deleting commit tidies (not once a second): the size at each measurement
    # does not depend on how the cycles fall against the clock
    monkeypatch.setattr(sqlite_backend, "TIDY_EVERY", 0.0)
    db = tmp_path / "flat.db"
    files, wals = [], []
    async with Harness(shop(), f"sqlite:///{db}", retention=timedelta(0), clock=_clock()) as h:
        for cycle in range(8):
            h.client.send_many(
                [OrderPlaced(order_id=f"c{cycle}-{n}").envelope for n in range(2000)]
            )
            await h.idle()
            await h.advance(61)
            assert h.client.instances() == []
            file, wal = await asyncio.to_thread(_file_and_wal, db)
            files.append(file)
            wals.append(wal)
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
            assert c.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM log").fetchone()[0] < 10
    # after the first cycles, six more of 2,000 instances leave the file no bigger (it
    # even shrinks: freed pages go back), and the WAL near its working size (SQLite's
    # 1000-page auto-checkpoint, and the checkpoints after passes)
    assert max(files[2:]) <= max(files[:2]) * 1.10, files
    assert max(wals) < 8 * 2**20, wals


async def test_the_engine_returns_freed_pages_to_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass's freed pages leave the file (bounded incremental vacuums after passes)."""
    monkeypatch.setattr(sqlite_backend, "TIDY_EVERY", 0.0)  # not throttled: deterministic
    db = tmp_path / "shrink.db"
    async with Harness(
        shop(), f"sqlite:///{db}", retention=timedelta(hours=1), clock=_clock()
    ) as h:
        h.client.send_many([OrderPlaced(order_id=f"o{n}").envelope for n in range(3000)])
        await h.idle()
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        full, _ = await asyncio.to_thread(_file_and_wal, db)
        await h.advance(3601)
        assert h.client.instances() == []
        emptied, wal = await asyncio.to_thread(_file_and_wal, db)
    assert emptied < full / 2, (full, emptied)
    assert wal < 8 * 2**20
