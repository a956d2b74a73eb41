"""The embedded database's failures say what happened: a database locked by another
process, a disk I/O error, a file deleted or replaced under an open broker. Each with real
SQLite files and, where a second party matters, a real second process."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import overture as ov
from overture.backends import sqlite as sqlite_backend
from overture.backends.sqlite import files as sqlite_files
from overture.runtime.engine import Engine

CLI = [sys.executable, "-m", "overture.cli"]

app = ov.App("errors")


@app.on("thing.happened")
async def noted(event: ov.Event) -> None:
    pass


@pytest.fixture
def locked_db(tmp_path: Path) -> Iterator[Path]:
    """A database whose write lock another process holds (a writer stuck mid-transaction)."""
    path = tmp_path / "locked.db"
    with ov.Client(f"sqlite:///{path}") as client:
        client.send("thing.happened", {"n": 1})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sqlite3, sys, time
                conn = sqlite3.connect({str(path)!r}, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO meta VALUES('holder', 'x')")
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        yield path
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_locked_database_is_still_readable_and_a_write_says_it_is_locked(
    locked_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_files, "BUSY_SECONDS", 0.3)
    # opening and reading need no write lock
    with ov.Client(f"sqlite:///{locked_db}") as client:
        assert [e.envelope.data for e in client.events() if e.envelope] == [{"n": 1}]
        with pytest.raises(ov.StorageLocked, match=r"is locked: another process"):
            client.send("thing.happened", {"n": 2})
        assert not client.backend._conn.in_transaction  # type: ignore[attr-defined]


def test_the_cli_reads_a_locked_database(locked_db: Path) -> None:
    proc = subprocess.run(
        [*CLI, "events", "--json", "--backend", f"sqlite:///{locked_db}"],
        capture_output=True,
        text=True,
        timeout=20,  # before: the 30 s busy wait, then "not an Overture database"
    )
    assert proc.returncode == 0, proc.stderr
    assert '"n": 1' in proc.stdout or '"n":1' in proc.stdout


def _limit_file_size() -> None:
    # EFBIG instead of the SIGXFSZ that would kill the process: a real write() failing
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_disk_io_error_is_reported_as_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "io.db"
    with ov.Client(f"sqlite:///{path}") as client:
        client.send("thing.happened", {"n": 1})
    big = tmp_path / "big.json"
    big.write_text('{"blob": "' + "x" * 200_000 + '"}')
    proc = subprocess.run(
        [*CLI, "send", "thing.happened", "--data", f"@{big}", "--backend", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "disk I/O error" in proc.stderr and "JSON functions" not in proc.stderr
    with ov.Client(f"sqlite:///{path}") as client:  # nothing of it was kept
        assert [e.envelope.data for e in client.events() if e.envelope] == [{"n": 1}]


def _fresh_database(path: Path) -> None:
    with ov.Client(f"sqlite:///{path}") as client:
        client.send("thing.happened", {"n": 99})


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_client_never_writes_past_a_file_deleted_or_replaced_under_it(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "db.db"
    with ov.Client(f"sqlite:///{path}") as client:
        client.send("thing.happened", {"n": 1})
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            _fresh_database(tmp_path / "other.db")
            os.replace(tmp_path / "other.db", path)
        with pytest.raises(ov.StorageReplaced, match=r"deleted or replaced"):
            client.send("thing.happened", {"n": 2})


async def test_an_engine_stops_instead_of_committing_into_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "db.db"
    url = f"sqlite:///{path}"
    broker = sqlite_backend.SqliteBackend(url, str(path), 1)
    try:
        engine = Engine(app, broker)
        await engine.start()
        with ov.Client(url) as client:
            client.send("thing.happened", {"n": 1})
        _fresh_database(tmp_path / "other.db")
        os.replace(tmp_path / "other.db", path)
        with pytest.raises(ov.StorageReplaced):
            await engine.run_until_idle()
        await engine.stop()
    finally:
        broker.close()
    # What the new file then holds is not asserted: SQLite pairs the -wal file at the path
    # with whatever main file is there, so the old engine's WAL leaks into it. That is why
    # the engine must stop rather than go on committing into that WAL.
