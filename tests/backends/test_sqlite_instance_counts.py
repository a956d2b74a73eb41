"""SQLite's instance counts (``instance_counts``, kept by triggers) stay exact, and the
overview's reads are index lookups, not scans (checked with EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import overture as ov
from overture.backends import open_backend
from overture.backends.sqlite import SqliteBackend
from overture.backends.sqlite.counts import FINISHED_IN, FINISHED_SQL, STARTED_SQL
from overture.backends.sqlite.files import connect
from overture.ports import Batch, DeadLetter
from overture.protocol import FINAL
from overture.testing import Harness

from .test_conformance import row


def counted(path: Path) -> dict[tuple[str, str], int]:
    """The reference: a GROUP BY over every row of the file."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT process, status, COUNT(*) FROM instances GROUP BY 1, 2")
        return {(p, s): n for p, s, n in rows}
    finally:
        db.close()


def opened(path: Path) -> SqliteBackend:
    backend = open_backend(f"sqlite:///{path}")
    assert isinstance(backend, SqliteBackend)
    return backend


def test_the_partial_index_condition_names_every_final_status() -> None:
    want = "status IN (" + ", ".join(f"'{s}'" for s in sorted(FINAL)) + ")"
    assert want == FINISHED_IN


def test_counts_follow_inserts_status_changes_moves_replaces_and_deletes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    backend = opened(path)
    try:
        store = backend.store
        first = Batch("g")
        for n in range(30):
            r = row(f"i{n:02d}", ("running", "waiting")[n % 2], process=("a", "b")[n % 3 % 2])
            first.instances[r.id] = r
        store.commit(first)  # the state document path
        assert store.count_instances() == counted(path)
        second = Batch("g")
        for n in range(0, 30, 3):
            second.instances[f"i{n:02d}"] = row(f"i{n:02d}", "completed", process="a")
        second.instances["i01"] = row("i01", "waiting", process="b", journal_len=9)  # same
        second.instances["i04"] = row("i04", "stuck", process="c")  # another process
        store.commit(second)
        assert store.count_instances() == counted(path)
        # a batch with a dead letter goes row by row (_commit_rows): the same counts
        third = Batch("g")
        third.instances["i02"] = row("i02", "failed", process="a")
        third.instances["new"] = row("new", "running", process="b")
        third.dead_letters["d1"] = DeadLetter("d1", 1.0, "bad", 1, "engine", None, None, b"\xff")
        store.commit(third)
        assert store.count_instances() == counted(path)
        assert store.count_instances(process="c") == {("c", "stuck"): 1}
        # REPLACE and DELETE from a connection of the backend (retention deletes rows)
        db = connect(str(path))
        db.execute(
            "INSERT OR REPLACE INTO instances VALUES ('i05','a',1,NULL,'cancelled',0,1,2,'t',"
            "NULL,NULL,1)"
        )
        db.execute("DELETE FROM instances WHERE status = 'completed' AND process = 'a'")
        db.execute("UPDATE instances SET process = 'z' WHERE id = 'i07'")
        db.close()
        want = counted(path)
        assert store.count_instances() == want
        assert ("a", "completed") not in want  # a count that fell to 0 is left out
    finally:
        backend.close()


def test_a_file_from_before_the_counts_gets_them_filled_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    opened(path).close()
    db = sqlite3.connect(path)
    # the file as an earlier release wrote it: no counts, no finished index
    for trigger in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER instance_counts_{trigger}")
    db.execute("DROP TABLE instance_counts")
    db.execute("DROP INDEX instances_finished")
    for n in range(50):
        status = ("running", "completed", "failed", "stuck")[n % 4]
        db.execute(
            "INSERT INTO instances VALUES (?, ?, 1, NULL, ?, 0, ?, ?, 't', NULL, NULL, 1)",
            (f"o{n}", ("a", "b")[n % 2], status, float(n), float(n) + 1),
        )
    db.commit()
    db.close()
    backend = opened(path)
    try:
        assert backend.store.count_instances() == counted(path) != {}
        names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
        assert {"instance_counts", "instances_finished"} <= names
    finally:
        backend.close()


def test_a_current_file_is_opened_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    opened(path).close()
    for name in (path, tmp_path / "ro.db-wal", tmp_path / "ro.db-shm"):
        if name.exists():
            name.chmod(0o444)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # a reader: no write lock
    try:
        before = db.execute("PRAGMA data_version").fetchone()
        backend = opened(path)
        backend.close()
        assert db.execute("PRAGMA data_version").fetchone() == before
    finally:
        db.close()


def _plan(backend: SqliteBackend, sql: str, args: tuple[object, ...]) -> str:
    rows = backend._query(f"EXPLAIN QUERY PLAN {sql}", args)
    return " | ".join(r[-1] for r in rows)


def test_the_overview_reads_use_indexes_not_scans(tmp_path: Path) -> None:
    backend = opened(tmp_path / "plan.db")
    try:
        counts = _plan(backend, "SELECT process, status, n FROM instance_counts WHERE n > 0", ())
        assert "instance_counts" in counts and "instances" not in counts.replace("_counts", "")
        started = _plan(backend, STARTED_SQL, (0.0, 60.0, 0.0))
        assert "USING COVERING INDEX instances_by_created (created>?)" in started, started
        finished = _plan(backend, FINISHED_SQL, (0.0, 60.0, 0.0))
        assert "INDEX instances_finished (status=? AND updated>?)" in finished, finished
        assert "SCAN" not in started + finished
    finally:
        backend.close()


async def test_counts_stay_exact_through_an_engine_s_life(tmp_path: Path) -> None:
    """Starts, finishes, failures, cancels, replays (cache size 0, a restart) and a
    stuck instance, each compared with a GROUP BY of the file."""
    path = tmp_path / "life.db"
    url = f"sqlite:///{path}"

    def build(changed: bool) -> ov.App:
        app = ov.App("life")

        async def a() -> str:
            return "a"

        async def b() -> str:
            return "b"

        @app.process(trigger="go")
        async def proc(ctx: ov.Context, event: ov.Event) -> str:
            await ctx.step(b if changed else a)
            if event.data.get("fail"):
                raise RuntimeError("failed on purpose")
            await ctx.wait_for("continue")
            return "done"

        @app.process(trigger="quick")
        async def quick(ctx: ov.Context, event: ov.Event) -> str:
            return "quick"

        return app

    async with Harness(build(False), url, cache_size=0) as h:
        for n in range(6):
            h.client.send("go", {"fail": n == 5}, key=f"k{n}")
        for n in range(4):
            h.client.send("quick", {}, key=f"q{n}")
        await h.idle()
        want = counted(path)
        assert want == {("proc", "waiting"): 5, ("proc", "failed"): 1, ("quick", "completed"): 4}
        assert h.client.instance_counts() == want
        h.client.cancel(next(i.id for i in h.client.instances() if i.key == "k0"))
        await h.idle()
        h.client.send("continue", {}, key="k1")
        await h.idle()
        await h.restart()
        assert h.client.instance_counts() == counted(path)
        assert counted(path)[("proc", "cancelled")] == 1
    async with Harness(build(True), url, cache_size=0) as h:  # diverging code: stuck
        h.client.send("continue", {}, key="k2")
        await h.idle()
        want = counted(path)
        assert want[("proc", "stuck")] == 1
        assert h.client.instance_counts() == want
    async with Harness(build(False), url, cache_size=0) as h:  # fixed: it resumes
        h.client.send("continue", {}, key="k2")
        await h.idle()
        want = counted(path)
        assert ("proc", "stuck") not in want and want[("proc", "completed")] == 2
        assert h.client.instance_counts() == want
        assert sum(r.completed for r in h.client.instance_activity(since=_long_ago())) == 6


def _long_ago() -> datetime:
    return datetime(2000, 1, 1, tzinfo=UTC)


def test_rows_written_by_the_row_path_and_the_document_agree(tmp_path: Path) -> None:
    """The upsert keeps every column, as the REPLACE did (both commit paths)."""
    path = tmp_path / "same.db"
    backend = opened(path)
    try:
        r = row("x", "running", result={"a": 1})
        b = Batch("g")
        b.instances["x"] = r
        backend.store.commit(b)
        changed = replace(r, status="completed", version=2, key="k2", updated=9.0, journal_len=7)
        b = Batch("g")
        b.instances["x"] = changed
        b.dead_letters["d"] = DeadLetter("d", 1.0, "r", 1, "engine", None, None, b"\xff")
        backend.store.commit(b)
        assert backend.store.instance("x") == changed
        again = replace(changed, status="failed", error={"message": "m"}, result=None)
        b = Batch("g")
        b.instances["x"] = again
        backend.store.commit(b)
        assert backend.store.instance("x") == again
    finally:
        backend.close()
