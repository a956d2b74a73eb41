"""Instances per (process, status), kept exact by triggers; the finished-by-time index.

The dashboard's overview and every ``/metrics`` scrape ask how many instances each
(process, status) has. A ``GROUP BY`` over ``instances`` reads every row (seconds at a
million); ``instance_counts`` holds the answer instead, changed by triggers on
``instances`` in the same transaction as the rows, so it is exact at every commit and
reading it costs a few rows whatever the table's size.

Rejected: a covering index on ``(process, status)`` (the count is still a walk of a
million index entries, ~100 ms, and grows with the table); a count kept in the engine's
memory (other processes write the file too: a client's cancel, a replay from the CLI, a
second engine after a restart; a reader of the file would need the engine running).

The triggers fire on an insert, an update of ``process`` or ``status`` that changes
either, and a delete. The backend writes instance rows by upsert (an update in place):
``INSERT OR REPLACE`` deletes the old row without firing delete triggers unless
``recursive_triggers`` is on, so every connection of the backend turns it on too (a
REPLACE from one of them stays exact).

A file written before the table gets it on open, filled once from ``instances`` in the
same write transaction that creates the triggers (no commit can fall between the fill
and the first trigger).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ...protocol import FINAL, Status


def _in(statuses: Iterable[str]) -> str:
    """``status IN (...)`` as literal text (a partial index matches only literal terms)."""
    return "status IN (" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


FINISHED_IN = _in(FINAL)
"""The partial index's condition, written exactly as in the index: SQLite uses a partial
index only for a query whose WHERE contains this very term (a bound parameter would not
prove it)."""

FINISHED_INDEX = (
    "CREATE INDEX IF NOT EXISTS instances_finished ON instances(status, updated) "
    f"WHERE {FINISHED_IN};"
)
"""Finished instances by status and time: the overview's chart of completed and failed
per minute, and retention's sweep of old finished instances (the same definition)."""

_BUMP = (
    "INSERT INTO instance_counts VALUES ({row}.process, {row}.status, {n}) "
    "ON CONFLICT(process, status) DO UPDATE SET n = n + ({n});"
)

COUNTS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS instance_counts(
  process TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY(process, status)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS instance_counts_insert AFTER INSERT ON instances BEGIN
  {_BUMP.format(row="NEW", n=1)}
END;
CREATE TRIGGER IF NOT EXISTS instance_counts_update AFTER UPDATE OF process, status
ON instances WHEN OLD.process IS NOT NEW.process OR OLD.status IS NOT NEW.status BEGIN
  {_BUMP.format(row="OLD", n=-1)}
  {_BUMP.format(row="NEW", n=1)}
END;
CREATE TRIGGER IF NOT EXISTS instance_counts_delete AFTER DELETE ON instances BEGIN
  {_BUMP.format(row="OLD", n=-1)}
END;
"""
"""Statements split on ``;`` at ``END;`` only: see :func:`statements`."""

OBJECTS = frozenset(
    {
        "instance_counts",
        "instance_counts_insert",
        "instance_counts_update",
        "instance_counts_delete",
        "instances_finished",
    }
)
"""The schema objects of this module: a file that lacks one is brought up to date on open."""


def statements() -> list[str]:
    """The schema of this module as single statements (a trigger body holds ``;``)."""
    out = [FINISHED_INDEX]
    table, rest = COUNTS_SCHEMA.split(";", 1)
    out.append(table)
    out.extend(f"{t.strip()} END" for t in rest.split("END;") if t.strip())
    return out


def install(conn: sqlite3.Connection) -> None:
    """Create the table, triggers and index where missing, in the caller's write
    transaction; a table created now (or found without every trigger, so possibly
    stale) is filled from ``instances``."""
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    stale = not have >= OBJECTS - {"instances_finished"}
    for statement in statements():
        conn.execute(statement)
    if stale:
        conn.execute("DELETE FROM instance_counts")
        conn.execute(
            "INSERT INTO instance_counts "
            "SELECT process, status, COUNT(*) FROM instances GROUP BY process, status"
        )


def counts(conn: sqlite3.Connection, process: str | None) -> dict[tuple[str, str], int]:
    """How many instances each (process, status) has (of one process if given)."""
    if process is None:
        rows = conn.execute("SELECT process, status, n FROM instance_counts WHERE n > 0")
    else:
        rows = conn.execute(
            "SELECT process, status, n FROM instance_counts WHERE process = ? AND n > 0",
            (process,),
        )
    return {(p, s): n for p, s, n in rows}


STARTED_SQL = (
    "SELECT CAST((created - ?) / ? AS INTEGER) AS b, COUNT(*) FROM instances "
    "WHERE created >= ? GROUP BY b"
)
"""Started per bucket: a range of ``instances_by_created`` (covering: only ``created``)."""

FINISHED_SQL = (
    "SELECT status, CAST((updated - ?) / ? AS INTEGER) AS b, COUNT(*) FROM instances "
    f"WHERE {FINISHED_IN} AND {_in((Status.COMPLETED, Status.FAILED))} AND updated >= ? "
    "GROUP BY status, b"
)
"""Completed and failed per bucket: two ranges of ``instances_finished`` (by status,
then ``updated``), so only the window's rows are read, not every finished one."""
