"""The embedded backend: log and state in one SQLite file (WAL, fsync at every commit).

Design facts (``shared/notes/sqlite-log.md``): one writer at a time per file, so every write
is a short ``BEGIN IMMEDIATE`` transaction; the engine commits a whole batch of inputs (log
offsets, journals, state, emitted events) in one transaction (group commit); other
processes (``overture send``) append in their own short transactions and ring a doorbell,
a datagram to an abstract UNIX socket named after the file, so the engine wakes within
microseconds; ``PRAGMA data_version`` polled every 50 ms is the safety net for a lost ring.

A log record's rowid is ``partition << 40 | offset``, so one B-tree serves both the append
(``max(rowid)`` in the partition's range) and the ordered reads, with no separate index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import orjson

from ..binding import dump_headers, load_headers
from ..errors import (
    ConfigError,
    EngineBusy,
    StorageError,
    StorageFull,
    StorageLocked,
    StorageReplaced,
)
from ..ports import (
    Batch,
    DeadLetter,
    InboxRow,
    InstanceRow,
    InstanceSnapshot,
    NewRecord,
    Record,
    WaitRow,
    WorkRow,
    partition_for,
)
from ..protocol import FINAL

_SHIFT = 40
_MASK = (1 << _SHIFT) - 1
_POLL_SECONDS = 0.05
_FINAL = tuple(sorted(FINAL))  # as SQL parameters
# Doorbell datagrams beyond the plain ring: a client registering its result bell, the
# engine's acknowledgement, and the ids of the instances a commit finished.
_REGISTER = b"register "
_ACK = b"ack"
_FINISHED = b"finished "
_IDS_PER_DATAGRAM = 1000  # 32-character ids: ~33 kB, well inside a datagram
_REREGISTER_SECONDS = 1.0

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
"""
_DLQ_ADDED = (("raw_key", "BLOB"), ("headers", "TEXT"))
"""Columns of ``dlq`` that databases written before them lack (added on open)."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=_BUSY_SECONDS
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # fsync at every commit: durable across power loss
    conn.execute(f"PRAGMA busy_timeout={int(_BUSY_SECONDS * 1000)}")
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def _doorbell_address(path: str) -> bytes:
    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:24]
    return b"\0overture-" + digest.encode()


class SqliteBroker:
    """Log and store of ``sqlite:///path``; safe for several processes on one file."""

    def __init__(self, url: str, path: str, partitions: int) -> None:
        self.url = url
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigError(f"cannot create {path!r}: directory {directory!r} does not exist")
        try:
            self._conn = _connect(path)
            # the file as opened: a file deleted or replaced at the path is detected by it
            self._identity = _identity(path)
        except sqlite3.DatabaseError as exc:
            raise _storage_error(path, exc, "open") from exc
        try:  # commits use SQLite's JSON functions (built in since 3.38, JSON1 before)
            self._conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')")
        except sqlite3.OperationalError as exc:
            if "no such" not in str(exc):  # "no such function"/"no such table: json_each"
                raise _storage_error(path, exc, "open") from exc
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} lacks the JSON functions Overture needs "
                f"({exc}); use a Python whose SQLite is 3.38 or newer"
            ) from exc
        try:
            # Only a new (or older-format) database is written to at open: a reader must
            # not need the write lock, which a busy engine or a stuck writer may hold.
            if self._needs_schema(self._conn):
                self._write(lambda c: self._create(c, partitions))
            for statement in _STATE_DOCUMENT:
                self._conn.execute(statement)
            row = self._conn.execute("SELECT v FROM meta WHERE k='partitions'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise _storage_error(path, exc, "open") from exc
        self._partitions = int(row[0])
        self._lock = threading.RLock()  # the writer connection
        # Reads use their own connection: in WAL mode they see the last committed state
        # and never wait for a commit in progress (the engine builds its next batch
        # while the previous one is being fsynced).
        self._reader = _connect(path)
        self._read_lock = threading.Lock()
        self._doorbell = _doorbell_address(path)
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.setblocking(False)
        self._watch_threads: list[threading.Thread] = []
        self._local_watchers: list[Callable[[], None]] = []
        # Client processes waiting for results (their bells' addresses), learned from
        # registrations on the doorbell; rung after each commit that finishes instances.
        self._result_bells: dict[bytes, None] = {}
        self.log = self
        self.store = self

    @staticmethod
    def _needs_schema(conn: sqlite3.Connection) -> bool:
        """Whether the file lacks a table or column of this release (read-only check)."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables >= _TABLES:
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

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: refuse to write into a file no longer at the path, and turn
        SQLite's errors into Overture's (each write was rolled back: nothing was kept)."""
        try:
            now = _identity(self.path)
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
            translated = _environment_error(self.path, error, "write")
            if translated is None:
                raise
            raise translated from error

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one BEGIN IMMEDIATE transaction (the whole of it is retried on
        SQLITE_BUSY by busy_timeout at BEGIN, never halfway)."""
        conn = self._conn
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
            part = _partition(rec, self._partitions, now, i)
            off = heads.get(part)
            if off is None:
                top = conn.execute(
                    "SELECT max(id) FROM log WHERE id >= ? AND id < ?",
                    (part << _SHIFT, (part + 1) << _SHIFT),
                ).fetchone()[0]
                off = 0 if top is None else (top & _MASK) + 1
            cur = conn.execute(
                "INSERT OR IGNORE INTO log(id, key, value, ts, event_id, etype) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((part << _SHIFT) | off, rec.key, rec.value, now, rec.event_id, rec.event_type),
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
                ((partition << _SHIFT) | offset, (partition + 1) << _SHIFT, limit),
            ).fetchall()
        return [Record(partition, rid & _MASK, key, value, ts) for rid, key, value, ts in rows]

    def end_offset(self, partition: int) -> int:
        with self._read_lock:
            top = self._reader.execute(
                "SELECT max(id) FROM log WHERE id >= ? AND id < ?",
                (partition << _SHIFT, (partition + 1) << _SHIFT),
            ).fetchone()[0]
        return 0 if top is None else (top & _MASK) + 1

    def find_event(self, event_id: str) -> Record | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT id, key, value, ts FROM log WHERE event_id = ?", (event_id,)
            ).fetchone()
        if row is None:
            return None
        return Record(row[0] >> _SHIFT, row[0] & _MASK, row[1], row[2], row[3])

    def ring(self) -> None:
        """Tell a running engine (in any process) that records were appended."""
        for wake in list(self._local_watchers):
            wake()
        try:
            self._bell.sendto(b"!", self._doorbell)
        except OSError:
            pass  # no engine listening: it will read the records when it starts

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        stop = threading.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._doorbell)
        except OSError:
            sock.close()
            sock = None  # type: ignore[assignment]  # another subscriber holds it: poll only
        if sock is not None:
            sock.settimeout(_POLL_SECONDS)
        watcher = _connect(self.path)

        def watch() -> None:
            last = watcher.execute("PRAGMA data_version").fetchone()[0]
            while not stop.is_set():
                rang = False
                if sock is not None:
                    try:
                        rang = self._heard(sock.recv(256))
                    except TimeoutError:
                        pass
                    except OSError:
                        return
                else:
                    stop.wait(_POLL_SECONDS)
                version = watcher.execute("PRAGMA data_version").fetchone()[0]
                if rang or version != last:
                    last = version
                    wake()

        thread = threading.Thread(target=watch, name="overture-doorbell", daemon=True)
        thread.start()
        self._local_watchers.append(wake)

        def unsubscribe() -> None:
            stop.set()
            if wake in self._local_watchers:
                self._local_watchers.remove(wake)
            thread.join(timeout=1.0)
            if sock is not None:
                sock.close()
            watcher.close()

        return unsubscribe

    def _heard(self, datagram: bytes) -> bool:
        """Handle a doorbell datagram; True if it announces appended records."""
        if not datagram.startswith(_REGISTER):
            return True
        address = datagram[len(_REGISTER) :]
        self._result_bells[address] = None
        try:  # the acknowledgement tells the client its bell will be rung
            self._bell.sendto(_ACK, address)
        except OSError:
            self._result_bells.pop(address, None)
        return False

    def _ring_results(self, batch: Batch) -> None:
        """Tell registered clients which instances this commit finished."""
        finished = [i.encode() for i, row in batch.instances.items() if row.status in _FINAL]
        if not finished:
            return
        datagrams = [
            _FINISHED + b" ".join(finished[i : i + _IDS_PER_DATAGRAM])
            for i in range(0, len(finished), _IDS_PER_DATAGRAM)
        ]
        for address in list(self._result_bells):
            for datagram in datagrams:
                try:
                    self._bell.sendto(datagram, address)
                except BlockingIOError:
                    break  # its buffer is full: it catches up from the database
                except OSError:  # the client is gone
                    self._result_bells.pop(address, None)
                    break

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` (from a watcher thread) with the ids of the instances a commit
        finished, or with ``None`` when state changed in a way the watcher could not see
        (before the engine acknowledged it): the caller re-reads what it waits for.

        The watcher binds its own bell and registers it with the engine's doorbell (again
        every second, so a restarted engine learns it too); the engine rings it after each
        commit that finishes instances. Until an engine has acknowledged the registration,
        ``PRAGMA data_version`` checked every 50 ms stands in (no engine may be running yet).
        """
        stop = threading.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(b"\0overture-r-" + os.urandom(12).hex().encode())
        sock.settimeout(_POLL_SECONDS)
        register = _REGISTER + sock.getsockname()
        watcher = _connect(self.path)

        def watch() -> None:
            last = watcher.execute("PRAGMA data_version").fetchone()[0]
            acked = 0.0  # when the engine last acknowledged the registration
            registered = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now - registered >= _REREGISTER_SECONDS:
                    registered = now
                    try:
                        sock.sendto(register, self._doorbell)
                    except OSError:
                        pass  # no engine yet
                try:
                    datagram = sock.recv(65536)
                except TimeoutError:
                    datagram = b""
                except OSError:
                    return
                if datagram.startswith(_FINISHED):
                    wake(datagram[len(_FINISHED) :].decode().split(" "))
                    continue
                if datagram == _ACK:
                    fresh = now - acked > 2 * _REREGISTER_SECONDS
                    acked = now
                    if fresh:  # a commit may have finished something before it listened
                        wake(None)
                    continue
                if now - acked > 2 * _REREGISTER_SECONDS:
                    version = watcher.execute("PRAGMA data_version").fetchone()[0]
                    if version != last:
                        last = version
                        wake(None)

        thread = threading.Thread(target=watch, name="overture-result-bell", daemon=True)
        thread.start()

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=1.0)
            sock.close()
            watcher.close()

        return unsubscribe

    # -- Store --------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        document = _state_document(batch, self._partitions, time.time())  # before the lock
        with self._lock, self._writing():
            if document is not None:
                # One statement is one transaction, committed (WAL fsynced) inside the
                # call: the write lock is never held while this thread waits for the GIL.
                self._conn.execute(_APPLY_DOCUMENT, (document,))
            else:
                self._write(lambda c: self._commit_rows(c, batch))
        if batch.appends:
            self.ring()
        if self._result_bells:
            self._ring_results(batch)

    def _commit_rows(self, c: sqlite3.Connection, b: Batch) -> None:
        """The batch row by row, in one transaction: for the batches the state document
        cannot carry exactly (see ``_state_document``)."""
        if b.appends:
            self._append(c, b.appends)
        if b.offsets:
            c.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                [(b.group, part, off) for part, off in b.offsets.items()],
            )
        if b.instances:
            c.executemany(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [_instance_fields(r, _dump) for r in b.instances.values()],
            )
        if b.journal:
            c.executemany(
                "INSERT OR REPLACE INTO journal VALUES (?, ?, ?)",
                [(iid, pos, orjson.dumps(entries)) for iid, pos, entries in b.journal],
            )
        waits = {
            f"{w.instance_id}:{w.seq}": (w if present else None) for w, present in b.waits.items()
        }
        self._apply(c, "waits", waits, _wait_fields)
        self._apply(c, "work", b.work, lambda w: _work_fields(w, _as_is))
        self._apply(c, "inbox", b.inbox, lambda r: _inbox_fields(r, _as_is))
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
        return _instance(rows[0]) if rows else None

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
                rows[r[0]] = _instance(r)
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
        return [_instance(r) for r in self._query(sql, (*args, limit))]

    def active_instances(self) -> list[tuple[str, str | None]]:
        return [
            (r[0], r[1])
            for r in self._query(
                "SELECT id, key FROM instances WHERE status NOT IN (?, ?, ?)", _FINAL
            )
        ]

    def waits(self) -> list[WaitRow]:
        return [WaitRow(*r) for r in self._query("SELECT etype, key, instance_id, seq FROM waits")]

    def work(self) -> list[WorkRow]:
        return [
            WorkRow(*r)
            for r in self._query(
                "SELECT id, kind, due, attempt, instance_id, seq, name, payload FROM work"
            )
        ]

    def dead_letters(self) -> list[DeadLetter]:
        return [_dead_letter(r) for r in self._query(f"{_DLQ_SELECT} ORDER BY created, id")]

    def dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        rows = self._query(f"{_DLQ_SELECT} WHERE id = ?", (dead_letter_id,))
        return _dead_letter(rows[0]) if rows else None

    # -- Broker -------------------------------------------------------------------------

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


_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26
_BUSY_SECONDS = 30.0
_TABLES = frozenset(
    {"meta", "log", "offsets", "instances", "journal", "waits", "work", "inbox", "dlq"}
)


def _identity(path: str) -> tuple[int, int]:
    """(device, inode) of the file at ``path``."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _storage_error(path: str, error: sqlite3.DatabaseError, doing: str) -> Exception:
    """The Overture error for what SQLite reported while it tried to ``doing`` the file
    (by SQLite's primary result code; Python's sqlite3 has them since 3.11)."""
    return _environment_error(path, error, doing) or StorageError(
        f"SQLite could not {doing} {path!r}: {error} "
        f"({getattr(error, 'sqlite_errorname', '') or type(error).__name__})"
    )


def _environment_error(path: str, error: sqlite3.DatabaseError, doing: str) -> Exception | None:
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
            f"{_BUSY_SECONDS:.0f} s (a writer stuck mid-transaction, or a process stopped "
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


def _dump(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _text(value: Any) -> str | None:
    """A JSON column's text, carried as a JSON string in the state document (stored as
    the same bytes ``_dump`` gives)."""
    return None if value is None else orjson.dumps(value).decode()


def _partition(rec: NewRecord, partitions: int, now: float, index: int) -> int:
    """The partition an appended record goes to (keyless records spread by time)."""
    if rec.partition is not None:
        return rec.partition % partitions
    return partition_for(rec.key, partitions, int(now * 1000) + index)


def _as_is(raw: bytes | None) -> bytes | None:
    return raw


def _work_fields(w: WorkRow, raw: Callable[[bytes | None], Any]) -> list[Any]:
    return [w.id, w.kind, w.due, w.attempt, w.instance_id, w.seq, w.name, raw(w.payload)]


def _instance_fields(r: InstanceRow, dump: Callable[[Any], Any]) -> list[Any]:
    return [
        r.id,
        r.process,
        r.version,
        r.key,
        r.status,
        r.partition,
        r.created,
        r.updated,
        r.trigger_id,
        dump(r.result),
        dump(r.error),
        r.journal_len,
    ]


def _wait_fields(w: WaitRow) -> list[Any]:
    return [f"{w.instance_id}:{w.seq}", w.event_type, w.key, w.instance_id, w.seq]


def _inbox_fields(r: InboxRow, raw: Callable[[bytes], Any]) -> list[Any]:
    return [r.id, r.instance_id, r.event_type, r.key, raw(r.value), r.received]


_DLQ_SELECT = (
    "SELECT id, created, reason, attempts, source, etype, key, value, part, off, raw_key, "
    "headers FROM dlq"
)


def _dead_letter(r: Sequence[Any]) -> DeadLetter:
    headers = None if r[11] is None else load_headers(r[11])
    return DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], headers)


class _NotCarried(Exception):
    """A batch the state document cannot carry exactly."""


def _utf8(raw: bytes | None) -> str | None:
    """Raw bytes as text for the state document, if they are UTF-8 without NUL."""
    if raw is None:
        return None
    if b"\x00" in raw:
        raise _NotCarried
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _NotCarried from None


def _state_document(b: Batch, partitions: int, now: float) -> str | None:
    """A batch as one JSON document for ``_APPLY_DOCUMENT``, or None when it cannot carry
    it exactly and the batch goes row by row (``_commit_rows``): a dead letter (its
    original bytes may be anything), other bytes that are not UTF-8 text, or a NUL in any
    string (SQLite's JSON functions end a string there). Events that decoded never hold
    such bytes, so the engine's batches practically always take the document. Bound as
    text: SQLite 3.45+ would read a BLOB as JSONB."""
    if b.dead_letters:
        return None
    doc: dict[str, Any] = {}
    try:
        if b.appends:
            seen: set[str] = set()
            appends = []
            for i, rec in enumerate(b.appends):
                if rec.event_id is not None:
                    if rec.event_id in seen:
                        continue  # a duplicate id, as the log's unique index would drop it
                    seen.add(rec.event_id)
                part = _partition(rec, partitions, now, i)
                appends.append([part, rec.key, _utf8(rec.value), rec.event_id, rec.event_type])
            doc["a"], doc["ts"] = appends, now
        if b.work:
            doc["kd"] = [work_id for work_id, w in b.work.items() if w is None]
            doc["k"] = [_work_fields(w, _utf8) for w in b.work.values() if w is not None]
        if b.inbox:
            doc["bd"] = [inbox_id for inbox_id, r in b.inbox.items() if r is None]
            doc["b"] = [_inbox_fields(r, _utf8) for r in b.inbox.values() if r is not None]
    except _NotCarried:
        return None
    if b.offsets:
        doc["o"] = [[b.group, part, off] for part, off in b.offsets.items()]
    if b.instances:
        doc["i"] = [_instance_fields(r, _text) for r in b.instances.values()]
    if b.journal:
        doc["j"] = b.journal
    if b.waits:
        doc["wd"] = [f"{w.instance_id}:{w.seq}" for w, present in b.waits.items() if not present]
        doc["wa"] = [_wait_fields(w) for w, present in b.waits.items() if present]
    document = orjson.dumps(doc).decode()
    # orjson writes a NUL as \u0000. (Escaped NULs inside result or journal JSON match
    # too: such a batch merely goes row by row, which is also exact.)
    return None if "\\u0000" in document else document


def _rows(table: str, path: str, columns: int, blobs: Collection[int] = ()) -> str:
    """``INSERT OR REPLACE`` into ``table`` of the rows at ``path`` of the state document.
    Element ``i`` of a row fills column ``i``; ``blobs`` columns become BLOBs: a JSON
    string element gives its text, an array element its JSON text (byte for byte what
    orjson wrote: SQLite keeps the input's text)."""
    values = ", ".join(
        f"CAST(json_extract(value, '$[{i}]') AS BLOB)"
        if i in blobs
        else f"json_extract(value, '$[{i}]')"
        for i in range(columns)
    )
    return f"INSERT OR REPLACE INTO {table} SELECT {values} FROM json_each(NEW.doc, '{path}');"


# Appended records: offsets continue each partition's log densely, in the document's
# order, skipping event ids the log already holds. (SQLite computes the whole SELECT
# before inserting, because it reads the table it inserts into.)
_APPEND_ROWS = f"""
  INSERT INTO log(id, key, value, ts, event_id, etype)
  SELECT (a.part << {_SHIFT}) | (ifnull((
           SELECT max(l.id) FROM log AS l
           WHERE l.id >= (a.part << {_SHIFT}) AND l.id < ((a.part + 1) << {_SHIFT})
         ) & {_MASK}, -1) + a.n),
         a.k, a.v, json_extract(NEW.doc, '$.ts'), a.eid, a.etype
  FROM (
    SELECT json_extract(e.value, '$[0]') AS part, json_extract(e.value, '$[1]') AS k,
           CAST(json_extract(e.value, '$[2]') AS BLOB) AS v,
           json_extract(e.value, '$[3]') AS eid, json_extract(e.value, '$[4]') AS etype,
           row_number() OVER (PARTITION BY json_extract(e.value, '$[0]') ORDER BY e.key) AS n
    FROM json_each(NEW.doc, '$.a') AS e
    WHERE json_extract(e.value, '$[3]') IS NULL
       OR NOT EXISTS (SELECT 1 FROM log AS d WHERE d.event_id = json_extract(e.value, '$[3]'))
  ) AS a;"""

# A batch is applied by ONE statement: an insert of its JSON document into a
# per-connection view whose trigger spreads it over the tables. Row by row (executemany),
# sqlite3 released the GIL for every row, and the commit thread had to win it back from
# the busy engine each time, a thousand times per commit while holding the database's
# write lock, so commits stalled senders and each other instead of overlapping the
# engine. Alone, the statement is its own transaction.
_STATE_DOCUMENT = (
    "CREATE TEMP VIEW IF NOT EXISTS state_document(doc) AS SELECT NULL",
    f"""
CREATE TEMP TRIGGER IF NOT EXISTS state_document_apply
INSTEAD OF INSERT ON state_document BEGIN
  {_APPEND_ROWS}
  {_rows("offsets", "$.o", 3)}
  {_rows("instances", "$.i", 12, blobs=(9, 10))}
  {_rows("journal", "$.j", 3, blobs=(2,))}
  DELETE FROM waits WHERE id IN (SELECT value FROM json_each(NEW.doc, '$.wd'));
  {_rows("waits", "$.wa", 5)}
  DELETE FROM work WHERE id IN (SELECT value FROM json_each(NEW.doc, '$.kd'));
  {_rows("work", "$.k", 8, blobs=(7,))}
  DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(NEW.doc, '$.bd'));
  {_rows("inbox", "$.b", 6, blobs=(4,))}
END""",
)
_APPLY_DOCUMENT = "INSERT INTO temp.state_document VALUES (?)"


def _instance(row: tuple[Any, ...]) -> InstanceRow:
    values = list(row)
    values[9] = None if values[9] is None else orjson.loads(values[9])
    values[10] = None if values[10] is None else orjson.loads(values[10])
    return InstanceRow(*values)
