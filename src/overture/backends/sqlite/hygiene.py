"""The database file's size: freed pages returned to the file system, the WAL kept small.

Retention deletes rows; SQLite reuses the pages they free, so the file stops growing,
but without more it never shrinks and its WAL grows to the biggest burst between two
automatic checkpoints. Three things keep both in check:

- A new file is created with ``PRAGMA auto_vacuum=INCREMENTAL`` (``files.connect``:
  it must be set before the first table exists). Such a file keeps its free pages on a
  list that ``PRAGMA incremental_vacuum(N)`` truncates from the end of the file.
- After a commit that deleted rows (a retention pass, a dead-letter deletion) the
  backend calls :func:`tidy`: at most :data:`VACUUM_PAGES` pages returned (a few
  milliseconds of the write lock, never a whole-file rewrite), then a PASSIVE
  checkpoint, which copies the WAL into the file without waiting for readers, so the
  next writer restarts the WAL from its beginning and it stays small.
- A file created before this release has ``auto_vacuum=NONE``: it keeps working (its
  free pages are reused, the file does not shrink); ``overture gc --vacuum``
  (:func:`vacuum`) converts it, which needs a full ``VACUUM`` (a rewrite of the file,
  with the engine stopped).

Rejected: ``auto_vacuum=FULL`` (truncates at every commit, moving pages inside every
engine commit: the engine's commits would pay for deletion) and a ``VACUUM`` after
passes (rewrites the whole file, holding the write lock for seconds per gigabyte).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

INCREMENTAL = 2
"""``PRAGMA auto_vacuum``'s value for INCREMENTAL (0: NONE, 1: FULL)."""

VACUUM_PAGES = 512
"""Most free pages one :func:`tidy` returns to the file system (2 MiB of 4 KiB pages):
a pass of 200 instances frees far fewer, so the list is emptied pass by pass while the
write lock is held for a few milliseconds at most."""


@dataclass(frozen=True, slots=True)
class FileSize:
    """Bytes of the database file and of its WAL (``-wal``) at one moment."""

    file: int
    wal: int

    @property
    def total(self) -> int:
        return self.file + self.wal


def file_size(path: str) -> FileSize:
    """The sizes of ``path`` and ``path-wal`` (0 for a file that does not exist)."""
    return FileSize(_size(path), _size(path + "-wal"))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def incremental(conn: sqlite3.Connection) -> bool:
    """Whether the file is in ``auto_vacuum=INCREMENTAL`` mode."""
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == INCREMENTAL


def tidy(conn: sqlite3.Connection, pages: int = VACUUM_PAGES) -> int:
    """Return at most ``pages`` free pages to the file system (an INCREMENTAL file) and
    checkpoint the WAL without waiting for readers (PASSIVE). Outside any transaction;
    the caller holds the connection. Returns the pages returned."""
    freed = 0
    if incremental(conn):
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free:
            freed = min(free, pages)
            # executescript steps the pragma to its end: execute() would step it once,
            # which returns one page
            conn.executescript(f"PRAGMA incremental_vacuum({freed});")
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return freed


def vacuum(conn: sqlite3.Connection) -> None:
    """Rewrite the file without its free pages, in INCREMENTAL mode from then on, and
    truncate the WAL. Needs every other connection idle (the engine stopped)."""
    conn.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
