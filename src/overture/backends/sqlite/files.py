"""The database file: connections to it, its identity, and what SQLite reports about it
as Overture's errors (a failure of the disk, the file or another process, as opposed to
a bug, which is left to raise as it is)."""

from __future__ import annotations

import os
import sqlite3

from ...errors import ConfigError, StorageError, StorageFull, StorageLocked

BUSY_SECONDS = 30.0
"""How long a write waits for another process's write lock before it is StorageLocked."""


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode, fsyncing at every commit, waiting ``BUSY_SECONDS`` for
    the write lock (autocommit: transactions are explicit). A file created by it is in
    ``auto_vacuum=INCREMENTAL`` mode (``hygiene.py``)."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_SECONDS
    )
    if new:
        # Before anything writes the file's header (journal_mode=WAL does). Only for a
        # new file: on an existing one it would change nothing (only a VACUUM converts
        # one: ``overture gc --vacuum``) and would wait for a write lock a reader must
        # never need.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # fsync at every commit: durable across power loss
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
    conn.execute("PRAGMA journal_size_limit=67108864")
    # a REPLACE of an instance row fires the counting delete trigger (counts.py)
    conn.execute("PRAGMA recursive_triggers=ON")
    return conn


_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file at ``path``."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def storage_error(path: str, error: sqlite3.DatabaseError, doing: str) -> Exception:
    """The Overture error for what SQLite reported while it tried to ``doing`` the file
    (by SQLite's primary result code; Python's sqlite3 has them since 3.11)."""
    return environment_error(path, error, doing) or StorageError(
        f"SQLite could not {doing} {path!r}: {error} "
        f"({getattr(error, 'sqlite_errorname', '') or type(error).__name__})"
    )


def environment_error(path: str, error: sqlite3.DatabaseError, doing: str) -> Exception | None:
    """The Overture error for a failure of the file, the disk or another process (None
    for anything else, e.g. a constraint violation: a bug, which must not be disguised)."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    name = getattr(error, "sqlite_errorname", "") or type(error).__name__
    if code == _SQLITE_FULL:
        return StorageFull(
            f"the disk holding {path!r} is full (or the database reached its size limit): "
            "nothing was written; free some space and retry"
        )
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageLocked(
            f"{path!r} is locked: another process has held its write lock for over "
            f"{BUSY_SECONDS:.0f} s (a writer stuck mid-transaction, or a process stopped "
            f"while it held the lock: see `fuser {path}`); nothing was written"
        )
    if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return ConfigError(f"{path!r} is not an Overture database: {error} ({name})")
    if code == _SQLITE_READONLY:
        return StorageError(
            f"cannot write to {path!r}: it (or its directory, where SQLite keeps the "
            f"-wal and -shm files) is read-only ({error}, {name})"
        )
    if code == _SQLITE_CANTOPEN:
        return StorageError(f"cannot open {path!r}: {error} ({name}); check the path and rights")
    if code == _SQLITE_IOERR:
        return StorageError(
            f"disk I/O error on {path!r} while trying to {doing} it ({name}): the operating "
            "system refused a read or write (a failing disk, a full or read-only file "
            "system, a file size limit); nothing of this write was kept"
        )
    return None
