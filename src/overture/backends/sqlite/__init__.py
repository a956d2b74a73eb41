"""The embedded backend: log and state in one SQLite file (WAL, fsync at every commit).

Modules: ``backend`` (``SqliteBackend``), ``document`` (a batch as one JSON document,
applied by one statement), ``doorbell`` (wakeups between processes), ``files``
(connections, the file's identity, SQLite's failures as Overture's errors), ``tasks``
(the task queue workers claim from, ``SqliteBackend.tasks``).

Design facts (``shared/notes/sqlite-log.md``): one writer at a time per file, so every write
is a short ``BEGIN IMMEDIATE`` transaction; the engine commits a whole batch of inputs (log
offsets, journals, state, emitted events) in one transaction (group commit); other
processes (``overture send``) append in their own short transactions and ring a doorbell,
a datagram to an abstract UNIX socket named after the file, so the engine wakes within
microseconds; ``PRAGMA data_version`` polled every 50 ms is the safety net for a lost ring.

A log record's rowid is ``partition << 40 | offset``, so one B-tree serves both the append
(``max(rowid)`` in the partition's range) and the ordered reads, with no separate index.
"""

from .backend import SqliteBackend

__all__ = ["SqliteBackend"]
