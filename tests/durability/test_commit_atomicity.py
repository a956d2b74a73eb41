"""A batch's state and the offsets it consumed are durable together, or not at all.

In-process checks of the commit itself (the crash-point subprocess test,
``test_crash_points.py``, checks what a restart makes of every prefix of a commit).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import overture as ov
from overture.backends import open_backend
from overture.backends.sqlite import SqliteBackend
from overture.ports import Batch
from overture.testing import Harness

from .crashpoint import commit_path


def _app(effects: list[str]) -> ov.App:
    app = ov.App("atomic")

    async def work(job: str) -> str:
        effects.append(f"step:{job}")
        return job.upper()

    @app.process(trigger="job.requested")
    async def job(ctx: ov.Context, event: ov.Event) -> str:
        return str(await ctx.step(work, event.data["job"]))

    @app.on("job.requested")
    async def notify(event: ov.Event) -> None:
        effects.append(f"notified:{event.data['job']}")

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://atomic"
    return f"sqlite:///{tmp_path / 'atomic.db'}"


async def test_a_batch_whose_commit_fails_is_redone_from_the_same_offsets(url: str) -> None:
    """Offsets move only with the batch that consumed them: if that batch's commit fails,
    a restart reads the same records again (committing offsets on read would skip them)."""
    effects: list[str] = []
    async with Harness(_app(effects), url) as h:
        real = h.backend.commit
        failed: list[Batch] = []

        def commit(batch: Batch) -> None:
            if batch.instances and not failed:  # the first batch that starts an instance
                failed.append(batch)
                raise OSError("disk I/O error (injected)")
            real(batch)

        h.backend.commit = commit  # type: ignore[method-assign]
        h.client.send("job.requested", {"job": "a"}, key="a")
        with pytest.raises(OSError, match="injected"):
            await h.idle()
        assert failed and failed[0].offsets  # the failed batch carried the offsets
        assert h.backend.offsets(h.engine.group) == {}  # and nothing else committed them
        assert h.client.instances() == []
        await h.restart()
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "A")
        # the effects of the lost batch run again: at least once
        assert effects.count("step:a") >= 1 and effects.count("notified:a") >= 1


def _transactions(statements: list[str]) -> list[list[str]]:
    """The transactions a traced commit ran: each ``BEGIN ... COMMIT`` block is one, and
    so is each statement outside a block (autocommit). A statement running a trigger is
    traced again at each trigger subprogram, with the same text: one statement."""
    out: list[list[str]] = []
    block: list[str] | None = None
    for sql in statements:
        word = sql.split(None, 1)[0].upper()
        if block is not None:
            block.append(sql)
            if word in ("COMMIT", "END", "ROLLBACK"):
                out.append(block)
                block = None
        elif word == "BEGIN":
            block = [sql]
        elif out and len(out[-1]) == 1 and out[-1][0] == sql and "state_document" in sql:
            continue  # the same statement's trigger subprogram
        else:
            out.append([sql])
    assert block is None, f"a transaction was left open: {block}"
    return out


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'one.db'}"


async def test_every_commit_is_one_transaction_holding_its_offsets(sqlite_url: str) -> None:
    """All three SQLite commit paths write the state and the offsets in one transaction:
    the one-statement JSON document; the document and the rest of the batch (here a dead
    letter) in one explicit transaction; row by row, for a batch the document cannot
    carry (a NUL in a string)."""
    effects: list[str] = []
    # retention=None: a retention pass (deletions, log trimming) would put the engine's
    # first batch on the document-and-rest path; this test wants each path chosen by input
    async with Harness(_app(effects), sqlite_url, retention=None) as h:
        broker = h.backend
        assert isinstance(broker, SqliteBackend)
        real = broker.commit
        seen: list[tuple[Batch, list[list[str]]]] = []

        def commit(batch: Batch) -> None:
            statements: list[str] = []
            broker._conn.set_trace_callback(statements.append)
            try:
                real(batch)
            finally:
                broker._conn.set_trace_callback(None)
            seen.append((batch, _transactions(statements)))

        broker.commit = commit  # type: ignore[method-assign]
        for i in range(20):
            h.client.send("job.requested", {"job": f"j{i}"}, key=f"j{i}")
        await h.idle()
        h.client.send_raw(b"not json", key="x")  # a dead letter: the document and the rest
        h.client.send("job.requested", {"job": "late"}, key="late")
        await h.idle()
        h.client.send("job.requested", {"job": "nul\x00"}, key="nul")  # row by row
        await h.idle()
        assert len(h.client.instances(status="completed")) == 22
        assert "NUL\x00" in {i.result for i in h.client.instances()}  # exactly, NUL and all
    paths = set()
    for batch, transactions in seen:
        assert len(transactions) == 1, f"a commit ran {len(transactions)} transactions"
        (statements,) = transactions
        path = commit_path(statements)
        paths.add(path)
        if path != "document":
            assert statements[-1].upper() == "COMMIT"
        if path == "extras":
            assert batch.dead_letters
        if path == "rows" and batch.offsets:
            assert any("INTO offsets" in s for s in statements)
    assert paths == {"rows", "document", "extras"}


def test_sqlite_runs_in_wal_mode_with_fsync_at_every_commit(tmp_path: Path) -> None:
    """``synchronous=FULL`` on every connection that writes or reads, and WAL on the file."""
    path = tmp_path / "durable.db"
    broker = open_backend(f"sqlite:///{path}")
    assert isinstance(broker, SqliteBackend)
    try:
        for conn in (broker._conn, broker._reader):
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with sqlite3.connect(path) as other:  # WAL is a property of the file
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        broker.close()
