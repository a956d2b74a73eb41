"""``SqliteBackend``: log and state in one SQLite file (see the package docstring)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ...binding import dump_headers
from ...errors import ConfigError, EngineBusy, NotFound, StorageReplaced
from ...ports import (
    ActivityRow,
    Batch,
    Capabilities,
    Claim,
    DeadLetter,
    EngineBackend,
    InboxRow,
    InstanceQuery,
    InstanceRow,
    InstanceSnapshot,
    NewRecord,
    Record,
    WaitRow,
    WorkRow,
)
from ...protocol import FINAL, Status
from ..embedded import claim_whole, missing_letters
from .counts import FINISHED_IN, FINISHED_INDEX, FINISHED_SQL, OBJECTS, STARTED_SQL, install
from .counts import counts as stored_counts
from .document import (
    APPLY_DOCUMENT,
    DLQ_SELECT,
    INSTANCE_UPSERT,
    MASK,
    SHIFT,
    as_is,
    dead_letter_of,
    deletions,
    document_view,
    dump_json,
    extras,
    inbox_fields,
    instance_fields,
    instance_of,
    partition_of,
    state_document,
    trims,
    wait_fields,
    work_fields,
)
from .doorbell import Doorbell
from .files import connect, environment_error, identity, storage_error
from .hygiene import tidy
from .tasks import TASKS_SCHEMA, SqliteTaskQueue, apply_tasks, check_tasks

_FINAL = tuple(sorted(FINAL))  # as SQL parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log(
  id INTEGER PRIMARY KEY, key TEXT, value BLOB NOT NULL, ts REAL NOT NULL,
  event_id TEXT, etype TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS log_event_id ON log(event_id) WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS offsets(
  grp TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
  PRIMARY KEY(grp, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instances(
  id TEXT PRIMARY KEY, process TEXT NOT NULL, version INTEGER NOT NULL, key TEXT,
  status TEXT NOT NULL, part INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
  trigger_id TEXT NOT NULL, result BLOB, error BLOB, journal_len INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_status ON instances(status, created);
CREATE INDEX IF NOT EXISTS instances_by_process ON instances(process, created);
CREATE INDEX IF NOT EXISTS instances_by_created ON instances(created);
CREATE INDEX IF NOT EXISTS instances_by_key ON instances(key, created) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS journal(
  instance_id TEXT NOT NULL, pos INTEGER NOT NULL, entries BLOB NOT NULL,
  PRIMARY KEY(instance_id, pos)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS waits(
  id TEXT PRIMARY KEY, etype TEXT NOT NULL, key TEXT, instance_id TEXT NOT NULL,
  seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS work(
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, due REAL NOT NULL, attempt INTEGER NOT NULL,
  instance_id TEXT, seq INTEGER, name TEXT, payload BLOB);
CREATE TABLE IF NOT EXISTS inbox(
  id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, etype TEXT NOT NULL, key TEXT,
  value BLOB NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_by_instance ON inbox(instance_id, received);
CREATE TABLE IF NOT EXISTS dlq(
  id TEXT PRIMARY KEY, created REAL NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
  source TEXT NOT NULL, etype TEXT, key TEXT, value BLOB NOT NULL, part INTEGER, off INTEGER,
  raw_key BLOB, headers TEXT);
CREATE INDEX IF NOT EXISTS dlq_by_created ON dlq(created);
CREATE TABLE IF NOT EXISTS state(
  ns TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
  PRIMARY KEY(ns, key)) WITHOUT ROWID;
"""
# Finished instances by finish time (for finished rows ``updated`` is the finish: a
# final status is never written again): retention finds its candidates in it, the
# overview's chart its per-minute counts (``counts.FINISHED_INDEX``).
_SCHEMA += FINISHED_INDEX + "\n"
_SCHEMA += TASKS_SCHEMA
_DLQ_ADDED = (("raw_key", "BLOB"), ("headers", "TEXT"))
"""Columns of ``dlq`` that databases written before them lack (added on open)."""
_TABLES = frozenset(
    {
        "meta",
        "log",
        "offsets",
        "instances",
        "journal",
        "waits",
        "work",
        "inbox",
        "dlq",
        "state",
        "tasks",
    }
)
"""Every table of this release: a file that lacks one (``state`` and ``tasks`` came
later) gets it on open, like the ``dlq`` columns."""
_INDEXES = frozenset({"dlq_by_created"})
"""Indexes added after their table (``dlq_by_created``: ``--dlq-retention``'s passes),
created on open for a file that lacks one."""


log = logging.getLogger("overture.sqlite")

TIDY_EVERY = 1.0
"""Seconds between two ``hygiene.tidy`` calls after deleting commits of one backend."""


class SqliteBackend:
    """Log and store of ``sqlite:///path``; safe for several processes on one file."""

    capabilities = Capabilities(
        dedups_event_ids=True,  # the log_event_id unique index
        finds_events_by_id=True,
        local_lock=True,  # flock on <db>.lock
        commit="thread",  # the fsync must not stall the engine's loop
        partitioned=False,
        remote=False,
        trims_log=True,  # Batch.trim_log: _trim_log
        deletes_dead_letters=True,  # delete_dead_letters: one transaction of the file
    )
    owned = None

    def __init__(self, url: str, path: str, partitions: int) -> None:
        self.url = url
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigError(f"cannot create {path!r}: directory {directory!r} does not exist")
        try:
            self._conn = connect(path)
            # the file as opened: a file deleted or replaced at the path is detected by it
            self._identity = identity(path)
        except sqlite3.DatabaseError as exc:
            raise storage_error(path, exc, "open") from exc
        try:  # commits use SQLite's JSON functions (built in since 3.38, JSON1 before)
            self._conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')")
        except sqlite3.OperationalError as exc:
            if "no such" not in str(exc):  # "no such function"/"no such table: json_each"
                raise storage_error(path, exc, "open") from exc
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} lacks the JSON functions Overture needs "
                f"({exc}); use a Python whose SQLite is 3.38 or newer"
            ) from exc
        try:
            # Only a new (or older-format) database is written to at open: a reader must
            # not need the write lock, which a busy engine or a stuck writer may hold.
            if self._needs_schema(self._conn):
                self._write(lambda c: self._create(c, partitions))
            row = self._conn.execute("SELECT v FROM meta WHERE k='partitions'").fetchone()
            self._partitions = int(row[0])
            for statement in document_view(self._partitions):
                self._conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise storage_error(path, exc, "open") from exc
        self._lock = threading.RLock()  # the writer connection
        self._tidied = -math.inf  # time.monotonic() of the last _tidy
        # Reads use their own connection: in WAL mode they see the last committed state
        # and never wait for a commit in progress (the engine builds its next batch
        # while the previous one is being fsynced).
        self._reader = connect(path)
        self._read_lock = threading.Lock()
        self._bell = Doorbell(path)
        self.log = self
        self.store = self
        self.tasks = SqliteTaskQueue(self)

    @staticmethod
    def _needs_schema(conn: sqlite3.Connection) -> bool:
        """Whether the file lacks a table or column of this release (read-only check)."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables >= _TABLES | _INDEXES | OBJECTS:
            return True
        have = {row[1] for row in conn.execute("PRAGMA table_info(dlq)")}
        return (
            any(column not in have for column, _ in _DLQ_ADDED)
            or (
                conn.execute("SELECT count(*) FROM meta WHERE k IN ('partitions', 'format')")
            ).fetchone()[0]
            < 2
        )

    @staticmethod
    def _create(conn: sqlite3.Connection, partitions: int) -> None:
        # Not executescript: it would COMMIT the surrounding transaction.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        have = {row[1] for row in conn.execute("PRAGMA table_info(dlq)")}
        for column, kind in _DLQ_ADDED:
            if column not in have:  # a database from before the column
                conn.execute(f"ALTER TABLE dlq ADD COLUMN {column} {kind}")
        conn.execute("INSERT OR IGNORE INTO meta VALUES('partitions', ?)", (str(partitions),))
        conn.execute("INSERT OR IGNORE INTO meta VALUES('format', '1')")
        install(conn)  # the instance counts (filled here for a file from before them)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: refuse to write into a file no longer at the path, and turn
        SQLite's errors into Overture's (each write was rolled back: nothing was kept)."""
        try:
            now = identity(self.path)
        except FileNotFoundError:
            now = None
        if now != self._identity:
            raise StorageReplaced(
                f"{self.path!r} was deleted or replaced by another file after this process "
                "opened it: nothing more is written to the old file (it would be lost); "
                "restart to use the file now at the path"
            )
        try:
            yield
        except sqlite3.DatabaseError as error:
            translated = environment_error(self.path, error, "write")
            if translated is None:
                raise
            raise translated from error

    def _write(self, fn: Callable[[sqlite3.Connection], Any], *, fsync: bool = True) -> Any:
        """Run ``fn`` in one BEGIN IMMEDIATE transaction (the whole of it is retried on
        SQLITE_BUSY by busy_timeout at BEGIN, never halfway).

        ``fsync=False`` commits without waiting for the disk (``synchronous=NORMAL``),
        for writes a crash may lose without harm (a task lease: the attempt is handed
        out again). WAL frames are written in order and every later ``fsync`` covers the
        earlier ones, so what a crash loses is a tail of such writes, never a hole, and
        the file stays consistent.
        """
        conn = self._conn
        if not fsync:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR); a failed
                # COMMIT may leave the transaction open: never leave it open either way.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            if not fsync:
                conn.execute("PRAGMA synchronous=FULL")
        return result

    # -- Log ----------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partitions

    def append(self, records: Sequence[NewRecord]) -> list[tuple[int, int] | None]:
        with self._lock, self._writing():
            out: list[tuple[int, int] | None] = self._write(lambda c: self._append(c, records))
        self.ring()
        return out

    def _append(
        self, conn: sqlite3.Connection, records: Iterable[NewRecord]
    ) -> list[tuple[int, int] | None]:
        heads: dict[int, int] = {}
        out: list[tuple[int, int] | None] = []
        now = time.time()
        for i, rec in enumerate(records):
            part = partition_of(rec, self._partitions, now, i)
            off = heads.get(part)
            if off is None:
                top = conn.execute(
                    "SELECT max(id) FROM log WHERE id >= ? AND id < ?",
                    (part << SHIFT, (part + 1) << SHIFT),
                ).fetchone()[0]
                off = 0 if top is None else (top & MASK) + 1
            cur = conn.execute(
                "INSERT OR IGNORE INTO log(id, key, value, ts, event_id, etype) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((part << SHIFT) | off, rec.key, rec.value, now, rec.event_id, rec.event_type),
            )
            if cur.rowcount == 1:
                out.append((part, off))
                heads[part] = off + 1
            else:
                out.append(None)
                heads[part] = off
        return out

    def read(self, partition: int, offset: int, limit: int) -> list[Record]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT id, key, value, ts FROM log WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                ((partition << SHIFT) | offset, (partition + 1) << SHIFT, limit),
            ).fetchall()
        return [Record(partition, rid & MASK, key, value, ts) for rid, key, value, ts in rows]

    def end_offset(self, partition: int) -> int:
        with self._read_lock:
            top = self._reader.execute(
                "SELECT max(id) FROM log WHERE id >= ? AND id < ?",
                (partition << SHIFT, (partition + 1) << SHIFT),
            ).fetchone()[0]
        return 0 if top is None else (top & MASK) + 1

    def find_event(self, event_id: str) -> Record | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT id, key, value, ts FROM log WHERE event_id = ?", (event_id,)
            ).fetchone()
        if row is None:
            return None
        return Record(row[0] >> SHIFT, row[0] & MASK, row[1], row[2], row[3])

    def ring(self) -> None:
        """Tell a running engine (in any process) that records were appended."""
        self._bell.ring()

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        return self._bell.subscribe(wake)

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """See :meth:`Doorbell.watch_finished`."""
        return self._bell.watch_finished(wake)

    # -- Store --------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        if batch.tasks:
            check_tasks(batch.tasks)
        document = state_document(batch, self._partitions, time.time())  # before the lock
        with self._lock, self._writing():
            if document is None:
                self._write(lambda c: self._commit_rows(c, batch))
            elif extras(batch):
                # the document and the few statements of the rest, in one transaction
                self._write(lambda c: self._commit_document(c, document, batch))
            else:
                # One statement is one transaction, committed (WAL fsynced) inside the
                # call: the write lock is never held while this thread waits for the GIL.
                self._conn.execute(APPLY_DOCUMENT, document)
            if batch.expired or batch.trim_log is not None or _deletes_letters(batch):
                self._tidy()
        if batch.appends:
            self.ring()
        self._bell.ring_results(batch)
        self._bell.ring_tasks(batch)

    def _commit_rows(self, c: sqlite3.Connection, b: Batch) -> None:
        """The batch row by row, in one transaction: for the batches the state document
        cannot carry exactly (see ``state_document``)."""
        if b.appends:
            self._append(c, b.appends)
        if b.offsets:
            c.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                [(b.group, part, off) for part, off in b.offsets.items()],
            )
        if b.instances:
            c.executemany(
                INSTANCE_UPSERT,
                [instance_fields(r, dump_json) for r in b.instances.values()],
            )
        if b.journal:
            c.executemany(
                "INSERT OR REPLACE INTO journal VALUES (?, ?, ?)",
                [(iid, pos, orjson.dumps(entries)) for iid, pos, entries in b.journal],
            )
        waits = {
            f"{w.instance_id}:{w.seq}": (w if present else None) for w, present in b.waits.items()
        }
        self._apply(c, "waits", waits, wait_fields)
        self._apply(c, "work", b.work, lambda w: work_fields(w, as_is))
        self._apply(c, "inbox", b.inbox, lambda r: inbox_fields(r, as_is))
        if b.tasks:
            apply_tasks(c, b.tasks, time.time())
        if b.state:
            gone = [(ns, bytes(key)) for (ns, key), v in b.state.items() if v is None]
            kept = [(ns, bytes(key), bytes(v)) for (ns, key), v in b.state.items() if v is not None]
            if gone:
                c.executemany("DELETE FROM state WHERE ns = ? AND key = ?", gone)
            if kept:
                c.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", kept)
        if b.expired:
            _delete_instances(c, b.expired)
        self._commit_extras(c, b)
        if b.trim_log is not None:
            _trim_log(c, b.trim_log, self._partitions)

    def _commit_document(self, c: sqlite3.Connection, document: dict[str, Any], b: Batch) -> None:
        """The batch as the state document, then its dead letters."""
        c.execute(APPLY_DOCUMENT, document)
        self._commit_extras(c, b)

    def _commit_extras(self, c: sqlite3.Connection, b: Batch) -> None:
        """What the state document never carries (``document.extras``: dead letters,
        bytes and rare), inside the commit's transaction, after the engine's rows."""
        self._apply(
            c,
            "dlq",
            b.dead_letters,
            lambda d: (
                d.id,
                d.created,
                d.reason,
                d.attempts,
                d.source,
                d.event_type,
                d.key,
                d.value,
                d.partition,
                d.offset,
                d.raw_key,
                None if d.headers is None else dump_headers(d.headers),
            ),
        )

    @staticmethod
    def _apply(
        c: sqlite3.Connection,
        table: str,
        changes: dict[str, Any],
        row: Callable[[Any], Sequence[Any]],
    ) -> None:
        dels = [(k,) for k, v in changes.items() if v is None]
        puts = [row(v) for v in changes.values() if v is not None]
        if dels:
            c.executemany(f"DELETE FROM {table} WHERE id = ?", dels)
        if puts:
            marks = ",".join("?" * len(puts[0]))
            c.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", puts)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def offsets(self, group: str) -> dict[int, int]:
        return dict(self._query("SELECT part, off FROM offsets WHERE grp = ?", (group,)))

    def instance(self, instance_id: str) -> InstanceRow | None:
        rows = self._query("SELECT * FROM instances WHERE id = ?", (instance_id,))
        return instance_of(rows[0]) if rows else None

    def existing(self, instance_ids: Collection[str]) -> set[str]:
        ids = list(instance_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self._query(
                    f"SELECT id FROM instances WHERE id IN ({marks})", tuple(chunk)
                )
            )
        return found

    def snapshots(self, instance_ids: Collection[str]) -> dict[str, InstanceSnapshot]:
        ids = list(instance_ids)
        rows: dict[str, InstanceRow] = {}
        journals: dict[str, list[dict[str, Any]]] = {}
        inboxes: dict[str, list[InboxRow]] = {}
        for start in range(0, len(ids), 500):  # three queries per 500 instances
            chunk = tuple(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for r in self._query(f"SELECT * FROM instances WHERE id IN ({marks})", chunk):
                rows[r[0]] = instance_of(r)
            for iid, blob in self._query(
                f"SELECT instance_id, entries FROM journal WHERE instance_id IN ({marks}) "
                "ORDER BY instance_id, pos",
                chunk,
            ):
                journals.setdefault(iid, []).extend(orjson.loads(blob))
            for r in self._query(
                "SELECT id, instance_id, etype, key, value, received FROM inbox "
                f"WHERE instance_id IN ({marks}) ORDER BY instance_id, received, id",
                chunk,
            ):
                inboxes.setdefault(r[1], []).append(InboxRow(*r))
        return {
            iid: InstanceSnapshot(row, journals.get(iid, []), inboxes.get(iid, []))
            for iid, row in rows.items()
        }

    def journal(self, instance_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for (blob,) in self._query(
            "SELECT entries FROM journal WHERE instance_id = ? ORDER BY pos", (instance_id,)
        ):
            out.extend(orjson.loads(blob))
        return out

    def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[InstanceRow]:
        where, args = [], []
        if process is not None:
            where.append("process = ?")
            args.append(process)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, id LIMIT ?"
        return [instance_of(r) for r in self._query(sql, (*args, limit))]

    def find_instances(self, query: InstanceQuery) -> list[InstanceRow]:
        # Every filter is a range of one of the indexes (each ends in created, and the
        # primary key id is in every index of a WITHOUT ROWID table), so a page of the
        # newest rows is a short index walk whatever the table's size.
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("process", query.process),
            ("status", query.status),
            ("key", query.key),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.created_from is not None:
            where.append("created >= ?")
            args.append(query.created_from)
        if query.created_to is not None:
            where.append("created < ?")
            args.append(query.created_to)
        if query.search:
            # an id prefix as a range of the primary key (LIKE would scan: ids may hold
            # % and _), or exactly a key
            where.append("((id >= ? AND id < ?) OR key = ?)")
            args.extend((query.search, _successor(query.search), query.search))
        if query.before is not None:
            where.append("(created, id) < (?, ?)")
            args.extend(query.before)
        sql = "SELECT * FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        return [instance_of(r) for r in self._query(sql, (*args, query.limit))]

    def count_instances(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        # kept by triggers in instance_counts (counts.py): a few rows, not a scan
        with self._read_lock:
            return stored_counts(self._reader, process)

    def instance_activity(self, since: float, width: float) -> list[ActivityRow]:
        counts: dict[int, list[int]] = {}
        for bucket, n in self._query(STARTED_SQL, (since, width, since)):
            counts.setdefault(bucket, [0, 0, 0])[0] += n
        for status, bucket, n in self._query(FINISHED_SQL, (since, width, since)):
            counts.setdefault(bucket, [0, 0, 0])[1 if status == Status.COMPLETED else 2] += n
        return [ActivityRow(since + b * width, *counts[b]) for b in sorted(counts)]

    def active_instances(self) -> list[tuple[str, str | None]]:
        return [
            (r[0], r[1])
            for r in self._query(
                "SELECT id, key FROM instances WHERE status NOT IN (?, ?, ?)", _FINAL
            )
        ]

    def waits(self) -> list[WaitRow]:
        return [WaitRow(*r) for r in self._query("SELECT etype, key, instance_id, seq FROM waits")]

    def expired(self, before: float, limit: int) -> tuple[list[str], float | None]:
        # One ordered range scan of ``instances_finished`` per final status, each of at
        # most limit + 1 rows, merged: the oldest finished instances of all three, and the
        # finish time of the first one not taken. No sort of every finished row.
        oldest: list[tuple[float, str]] = []
        for status in _FINAL:
            oldest += (
                (r[1], r[0])
                for r in self._query(
                    # the index's own WHERE term, verbatim: SQLite uses a partial index
                    # only for a query whose WHERE contains it
                    "SELECT id, updated FROM instances INDEXED BY instances_finished "
                    f"WHERE {FINISHED_IN} AND status = ? ORDER BY updated LIMIT ?",
                    (status, limit + 1),
                )
            )
        oldest.sort()
        ids = [iid for updated, iid in oldest[:limit] if updated <= before]
        rest = oldest[len(ids) :]
        return ids, (rest[0][0] if rest else None)

    def work(self) -> list[WorkRow]:
        return [
            WorkRow(*r)
            for r in self._query(
                "SELECT id, kind, due, attempt, instance_id, seq, name, payload FROM work"
            )
        ]

    def dead_letters(self) -> list[DeadLetter]:
        return [dead_letter_of(r) for r in self._query(f"{DLQ_SELECT} ORDER BY created, id")]

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        rows = self._query(f"{DLQ_SELECT} WHERE id = ?", (dead_letter_id,))
        return dead_letter_of(rows[0]) if rows else None

    def expired_dead_letters(self, before: float, limit: int) -> tuple[list[str], float | None]:
        # a range of dlq_by_created: limit + 1 rows, whatever the queue's length
        rows = self._query(
            "SELECT id, created FROM dlq INDEXED BY dlq_by_created ORDER BY created, id LIMIT ?",
            (limit + 1,),
        )
        ids = [i for i, created in rows[:limit] if created <= before]
        rest = rows[len(ids) :]
        return ids, (rest[0][1] if rest else None)

    def delete_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        wanted = None if ids is None else list(dict.fromkeys(ids))

        def delete(c: sqlite3.Connection) -> list[str]:
            if wanted is None:
                return [r[0] for r in c.execute("DELETE FROM dlq RETURNING id").fetchall()]
            chosen = orjson.dumps(wanted).decode()
            found = {
                r[0]
                for r in c.execute(
                    "SELECT id FROM dlq WHERE id IN (SELECT value FROM json_each(?))", (chosen,)
                )
            }
            missing = [i for i in wanted if i not in found]
            if missing:  # raised inside the transaction: rolled back, nothing deleted
                raise NotFound(missing_letters(missing))
            c.execute("DELETE FROM dlq WHERE id IN (SELECT value FROM json_each(?))", (chosen,))
            return wanted

        with self._lock, self._writing():
            deleted: list[str] = self._write(delete)
            if deleted:
                self._tidy(at_once=True)
        return deleted

    def _tidy(self, *, at_once: bool = False) -> None:
        """After a commit that deleted rows: the pages it freed back to the file system
        and a PASSIVE checkpoint (``hygiene.tidy``), at most every ``TIDY_EVERY`` seconds
        (a busy engine with retention 0 deletes in most of its batches: a checkpoint's
        fsync per batch would cost it throughput). Under the writer lock."""
        moment = time.monotonic()
        if at_once or moment - self._tidied >= TIDY_EVERY:
            self._tidied = moment
            try:
                with self._writing():
                    tidy(self._conn)
            except Exception as error:  # the commit itself succeeded: never report it failed
                log.warning("could not shrink %s after deleting rows: %s", self.path, error)

    # -- keyed state ----------------------------------------------------------------------

    def get(self, namespace: str, key: bytes) -> bytes | None:
        rows = self._query(
            "SELECT value FROM state WHERE ns = ? AND key = ?", (namespace, bytes(key))
        )
        return rows[0][0] if rows else None

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        # a range on the primary key (BLOBs compare with memcmp: byte order), not LIKE,
        # which would treat bytes of the prefix as wildcards and stop at a NUL
        prefix = bytes(prefix)
        end = _after_prefix(prefix)
        if end is None:
            sql = "SELECT key, value FROM state WHERE ns = ? AND key >= ? ORDER BY key"
            args: tuple[Any, ...] = (namespace, prefix)
        else:
            sql = "SELECT key, value FROM state WHERE ns = ? AND key >= ? AND key < ? ORDER BY key"
            args = (namespace, prefix, end)
        return [(k, v) for k, v in self._query(sql, args)]

    # -- Backend / EngineBackend ----------------------------------------------------------

    def claim(
        self,
        group_key: str,
        on_assign: Callable[[Mapping[int, EngineBackend]], None],
        on_revoke: Callable[[list[int]], None],
        on_failure: Callable[[BaseException], None],
    ) -> Claim:
        return claim_whole(self, on_assign, on_revoke)

    def reload(self) -> None:
        """Nothing to reload: every read goes to the file."""

    def engine_lock(self) -> Callable[[], None]:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineBusy(
                f"another engine is already running on {self.path}; one engine process "
                "owns an embedded database (use the Kafka backend to scale out)"
            ) from None

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return release

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._read_lock:
            self._reader.close()
        self._bell.close()


def _deletes_letters(batch: Batch) -> bool:
    return any(letter is None for letter in batch.dead_letters.values())


def _after_prefix(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (``None``: no
    such key, the prefix being empty or all 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _successor(prefix: str) -> str:
    """The smallest string after every string that starts with ``prefix`` (a prefix of
    only U+10FFFF has none below it: then one more of it, past every real id)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return prefix + "\U0010ffff"
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def _delete_instances(c: sqlite3.Connection, instance_ids: list[str]) -> None:
    """Delete these instances and everything of theirs (``Batch.expired``) in a batch that
    goes row by row: the state document's statements (``document.deletions``), bound to
    the list as a parameter."""
    ids = orjson.dumps(instance_ids).decode()
    for statement in DELETE_BY_LIST:
        c.execute(statement, {"ids": ids})


DELETE_BY_LIST = deletions(":ids")


def _trim_log(c: sqlite3.Connection, before: float, partitions: int) -> None:
    """Delete old consumed log records (``Batch.trim_log``) in a batch that goes row by
    row: the state document's statements (``document.trims``), bound to ``before``."""
    for statement in trims(":tl", partitions):
        c.execute(statement, {"tl": before})
