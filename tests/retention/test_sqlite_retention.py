"""SQLite retention: the log's consumed records, the file's size over cycles.

Log records carry the wall-clock time of their append and are judged by the earlier of
the engine clock and the wall clock, so the log tests run with a retention of 0 (a
virtual clock cannot age the log)."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

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


def _size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_the_file_stops_growing_once_retention_applies(tmp_path: Path) -> None:
    db = tmp_path / "size.db"
    sizes = []
    async with Harness(shop(), f"sqlite:///{db}", retention=timedelta(0), clock=_clock()) as h:
        for cycle in range(8):
            h.client.send_many(
                [OrderPlaced(order_id=f"c{cycle}-{n}").envelope for n in range(2000)]
            )
            await h.idle()
            await h.advance(61)
            assert h.client.instances() == []
            with sqlite3.connect(db) as c:
                c.execute("PRAGMA wal_checkpoint(PASSIVE)")
            sizes.append(db.stat().st_size)
    # the first cycle grows the file to its working size; after that freed pages are
    # reused: seven more cycles of 2,000 instances keep it within 10% of that (the
    # high-water mark moves a little with how many finished instances wait for a pass at
    # the busiest moment, which the batches' timing varies; without retention each
    # cycle adds about as much as the first, 100%)
    assert max(sizes) < sizes[0] * 1.10, sizes
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM log").fetchone()[0] < 10
    assert _size(db) > 0
