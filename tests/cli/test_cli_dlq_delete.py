"""``overture dlq delete`` and ``Client.delete_dead_letters``: all the ids or none, on
SQLite (one transaction, engine running or not) and Kafka (the engine's transaction)."""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from cli_helpers import Invoke, failed, ok, spawn

import overture as ov
from overture.errors import ConfigError, NotFound
from overture.testing import Harness


@pytest.fixture
def url(sqlite_and_kafka_url: str) -> str:
    return sqlite_and_kafka_url


async def letters_of(h: Harness, n: int) -> list[str]:
    for i in range(n):
        h.client.send_raw(f"not json {i}".encode(), key=f"k{i}")
    await h.idle()
    ids = sorted(letter.id for letter in h.client.dead_letters())
    assert len(ids) == n
    return ids


async def test_delete_some_then_all(
    invoke: Invoke, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Harness(ov.App("empty"), url) as h:
        first, second, third = await letters_of(h, 3)
        out = ok(invoke("dlq", "delete", first, second, "--reason", "bad producer"))
        await h.idle()
        if url.startswith("sqlite"):
            assert out.strip() == f"deleted 2 dead letters: {first}, {second}"
        else:
            assert out.startswith("deletion of 2 dead letters requested from their engines")
        assert [letter.id for letter in h.client.dead_letters()] == [third]
        assert "bad producer" in caplog.text  # the reason is logged by whoever deletes

        out = ok(invoke("dlq", "delete", "--all"))
        await h.idle()
        assert h.client.dead_letters() == []
        assert "1 dead letter" in out


async def test_an_unknown_id_deletes_nothing(invoke: Invoke, url: str) -> None:
    async with Harness(ov.App("empty"), url) as h:
        first, second = await letters_of(h, 2)
        error = failed(invoke("dlq", "delete", first, "nope", second))
        assert error == "error: no dead letter(s) 'nope'; nothing was deleted"
        await h.idle()
        assert sorted(letter.id for letter in h.client.dead_letters()) == [first, second]
        with pytest.raises(NotFound, match="'gone', 'nope'"):
            async with ov.AsyncClient(url) as client:
                await client.delete_dead_letters(["gone", first, "nope"])
        await h.idle()
        assert len(h.client.dead_letters()) == 2


def test_usage(invoke: Invoke, url: str) -> None:
    with ov.Client(url) as client:
        with pytest.raises(ConfigError):
            client.delete_dead_letters()
        with pytest.raises(ConfigError):
            client.delete_dead_letters(["x"], all=True)
        with pytest.raises(ConfigError):
            client.delete_dead_letters([])
        assert client.delete_dead_letters(all=True).ids == []
    failed(invoke("dlq", "delete"), code=2)
    failed(invoke("dlq", "delete", "x", "--all"), code=2)
    assert ok(invoke("dlq", "delete", "--all")).strip().endswith("0 dead letters")


# -- SQLite: the command as a subprocess, kill -9 in the middle -----------------------


def _fill(path: Path, n: int) -> None:
    """``n`` dead letters in a new database, as an engine parks undecodable records."""
    with ov.Client(f"sqlite:///{path}"):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO dlq(id, created, reason, attempts, source, value) "
            "VALUES (?, ?, 'decode', 0, 'decode', ?)",
            [(f"0:{i}", time.time(), b"x" * 200) for i in range(n)],
        )
    conn.close()


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM dlq").fetchone()[0])
    finally:
        conn.close()


def test_the_command_deletes_with_no_engine_running(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    _fill(db, 5)
    proc = spawn("dlq", "delete", "0:1", "0:3", "--backend", f"sqlite:///{db}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "deleted 2 dead letters: 0:1, 0:3"
    assert _count(db) == 3
    proc = spawn("dlq", "delete", "0:0", "0:1", "--backend", f"sqlite:///{db}")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == "error: no dead letter(s) '0:1'; nothing was deleted"
    assert _count(db) == 3


def test_kill_9_during_a_delete_leaves_all_or_none(tmp_path: Path) -> None:
    """The deletion of 20,000 letters is one transaction: a kill -9 at any moment leaves
    either every letter or none."""
    db = tmp_path / "x.db"
    n = 20_000
    seen: set[int] = set()
    for delay in (0.3, 0.5, 0.7, 0.9, 1.2, 1.6):
        if not db.exists() or _count(db) != n:
            for leftover in tmp_path.glob("x.db*"):
                leftover.unlink()
            _fill(db, n)
        proc = spawn("dlq", "delete", "--all", "--backend", f"sqlite:///{db}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        left = _count(db)
        assert left in (0, n), left
        seen.add(left)
    assert n in seen  # at least one kill landed before the commit
