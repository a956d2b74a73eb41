"""A batch as one JSON document, applied by a single statement; the rows' fields.

The engine's batches (appended events, state rows, offsets) travel as one document
inserted into a per-connection view whose trigger spreads it over the tables: one
statement, its own transaction. A batch the document cannot carry exactly goes row by
row instead (``SqliteBackend._commit_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson

from ...binding import load_headers
from ...core.status import FINAL, Status
from ...ports import (
    Batch,
    DeadLetter,
    InboxRow,
    InstanceRow,
    NewRecord,
    WaitRow,
    WorkRow,
    partition_for,
)

SHIFT = 40
"""A log record's rowid is ``partition << SHIFT | offset``."""
MASK = (1 << SHIFT) - 1


def dump_json(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def json_text(value: Any) -> str | None:
    """A JSON column's text, carried as a JSON string in the state document (stored as
    the same bytes ``dump_json`` gives)."""
    return None if value is None else orjson.dumps(value).decode()


def partition_of(rec: NewRecord, partitions: int, now: float, index: int) -> int:
    """The partition an appended record goes to (keyless records spread by time)."""
    if rec.partition is not None:
        return rec.partition % partitions
    return partition_for(rec.key, partitions, int(now * 1000) + index)


def as_is(raw: bytes | None) -> bytes | None:
    return raw


def work_fields(w: WorkRow, raw: Callable[[bytes | None], Any]) -> list[Any]:
    return [w.id, w.kind, w.due, w.attempt, w.instance_id, w.seq, w.name, raw(w.payload)]


def instance_fields(r: InstanceRow, dump: Callable[[Any], Any]) -> list[Any]:
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


def wait_fields(w: WaitRow) -> list[Any]:
    return [f"{w.instance_id}:{w.seq}", w.event_type, w.key, w.instance_id, w.seq]


def inbox_fields(r: InboxRow, raw: Callable[[bytes], Any]) -> list[Any]:
    return [r.id, r.instance_id, r.event_type, r.key, raw(r.value), r.received]


DLQ_SELECT = (
    "SELECT id, created, reason, attempts, source, etype, key, value, part, off, raw_key, "
    "headers FROM dlq"
)


def dead_letter_of(r: Sequence[Any]) -> DeadLetter:
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


COLUMNS = (
    "a",
    "ts",
    "o",
    "i",
    "j",
    "wd",
    "wa",
    "kd",
    "k",
    "bd",
    "b",
    "td",
    "t",
    "x",
    "tl",
    "s",
    "sd",
    "blobs",
)
"""The parameters of ``APPLY_DOCUMENT`` (the view's columns): appended records and their
time, offsets, instances, journal, waits deleted and written, work, inbox and tasks
deleted and written, instances retention deletes, the log trim's time, keyed state
written and deleted, and the keyed state's bytes."""


def state_document(b: Batch, partitions: int, now: float) -> dict[str, Any] | None:
    """A batch (appends, offsets, instances, journal, waits, work, inbox, tasks, keyed
    state, the instances retention deletes and the log's trim) as the parameters of
    ``APPLY_DOCUMENT``, one per ``COLUMNS``: each part's rows a JSON text of its own (or
    None), so that each part is parsed once, by its own statements, and only its own
    bytes. None when the document cannot carry the batch exactly and the batch goes row
    by row (``_commit_rows``): bytes that are not UTF-8 text, or a NUL in any string
    (SQLite's JSON functions end a string there).
    Events that decoded never hold such bytes, so the engine's batches practically always
    take the document. Bound as text: SQLite 3.45+ would read a BLOB as JSONB.

    Keyed state is bytes, which JSON cannot carry: its keys and values are concatenated
    in ``blobs``, and ``s`` and ``sd`` say where each one is (namespace, 1-based offset
    and length). Dead letters (``extras``, bytes too, and rare) go as statements of their
    own beside the document, in the same transaction (``SqliteBackend.commit``)."""
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
                part = partition_of(rec, partitions, now, i)
                appends.append([part, rec.key, _utf8(rec.value), rec.event_id, rec.event_type])
            doc["a"] = appends
        if b.work:
            doc["kd"] = [work_id for work_id, w in b.work.items() if w is None]
            doc["k"] = [work_fields(w, _utf8) for w in b.work.values() if w is not None]
        if b.inbox:
            doc["bd"] = [inbox_id for inbox_id, r in b.inbox.items() if r is None]
            doc["b"] = [inbox_fields(r, _utf8) for r in b.inbox.values() if r is not None]
        if b.tasks:
            doc["td"] = [task_id for task_id, t in b.tasks.items() if t is None]
            doc["t"] = [
                [t.id, t.queue, _utf8(t.request), t.deadline]
                for t in b.tasks.values()
                if t is not None
            ]
    except _NotCarried:
        return None
    if b.offsets:
        doc["o"] = [[b.group, part, off] for part, off in b.offsets.items()]
    if b.instances:
        doc["i"] = [instance_fields(r, json_text) for r in b.instances.values()]
    if b.journal:
        doc["j"] = b.journal
    if b.waits:
        doc["wd"] = [f"{w.instance_id}:{w.seq}" for w, present in b.waits.items() if not present]
        doc["wa"] = [wait_fields(w) for w, present in b.waits.items() if present]
    if b.expired:
        doc["x"] = b.expired
    blobs = b""
    if b.state:
        doc["s"], doc["sd"], blobs = _packed_state(b.state)
    columns: dict[str, Any] = dict.fromkeys(COLUMNS)
    for name, rows in doc.items():
        text = columns[name] = orjson.dumps(rows).decode()
        # orjson writes a NUL as \u0000. (Escaped NULs inside result or journal JSON
        # match too: such a batch merely goes row by row, which is also exact.)
        if "\\u0000" in text:
            return None
    columns["ts"], columns["tl"], columns["blobs"] = now, b.trim_log, blobs
    return columns


def _packed_state(
    state: dict[tuple[str, bytes], bytes | None],
) -> tuple[list[list[Any]], list[list[Any]], bytes]:
    """The keyed state's entries to write (namespace, key's offset and length, value's
    offset and length) and to delete (namespace, key's offset and length), and the bytes
    those offsets (1-based, as SQL's ``substr``) point into."""
    puts: list[list[Any]] = []
    gone: list[list[Any]] = []
    parts: list[bytes] = []
    at = 1
    for (namespace, key), value in state.items():
        entry: list[Any] = [namespace, at, len(key)]
        parts.append(key)
        at += len(key)
        if value is None:
            gone.append(entry)
        else:
            puts.append([*entry, at, len(value)])
            parts.append(value)
            at += len(value)
    return puts, gone, b"".join(parts)


_INSTANCE_COLUMNS = (
    "id",
    "process",
    "version",
    "key",
    "status",
    "part",
    "created",
    "updated",
    "trigger_id",
    "result",
    "error",
    "journal_len",
)
# An instance row is written by upsert, an update in place: the counting triggers
# (counts.py) then fire only when its status changes, and a REPLACE's delete (which
# fires no delete trigger unless recursive_triggers is on) is never relied on.
_UPSERT_INSTANCE = " ON CONFLICT(id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _INSTANCE_COLUMNS[1:]
)
INSTANCE_UPSERT = "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)" + _UPSERT_INSTANCE


def extras(b: Batch) -> bool:
    """The batch holds what the document leaves out (see ``state_document``)."""
    return bool(b.dead_letters)


LOG_TRIM_LIMIT = 2000
"""Most log records one pass deletes per partition: a range of the primary key, so the
write lock is held for a few milliseconds (docs/benchmarks.md, retention)."""


def trims(before: str, partitions: int) -> tuple[str, ...]:
    """The statements that delete old consumed log records (``Batch.trim_log``: those
    appended before the time ``before``, SQL: a column or a parameter; NULL: no trim),
    one per partition, at most ``LOG_TRIM_LIMIT`` each: only records every consumer
    group has passed, never the newest of a partition (appends number the next record
    from it), never the trigger of an unfinished instance. Guarded as ``deletions`` is."""
    listed = f"{before} IS NOT NULL"
    # by name, not NOT IN the final ones: instances_by_status then finds the few live
    # instances, where NOT IN scanned every stored one on every pass (a minute of
    # finished W1 instances is 200,000 rows)
    unfinished = ", ".join(f"'{status}'" for status in sorted(set(Status) - FINAL))
    statements = []
    for part in range(partitions):
        low, high = part << SHIFT, (part + 1) << SHIFT
        # a group that has not committed here has not read anything of it
        read_by_all = (
            f"(SELECT count(*) FROM offsets WHERE part = {part}) = "
            "(SELECT count(DISTINCT grp) FROM offsets)"
        )
        # below every group's next offset (none: NULL, nothing) and below the newest
        end = (
            f"min({low} | (SELECT min(off) FROM offsets WHERE part = {part}), "
            f"(SELECT max(id) FROM log WHERE id >= {low} AND id < {high}))"
        )
        statements.append(
            f"DELETE FROM log WHERE {listed} AND {read_by_all} AND id IN (SELECT id FROM log "
            f"WHERE id >= {low} AND id < {end} AND ts < {before} AND (event_id IS NULL OR "
            "event_id NOT IN (SELECT trigger_id FROM instances WHERE status IN "
            f"({unfinished}))) ORDER BY id LIMIT {LOG_TRIM_LIMIT})"
        )
    return tuple(statements)


def _blob(offset: str, length: str) -> str:
    """SQL: the bytes of the document's ``blobs`` at the offset and length that elements
    ``offset`` and ``length`` of a ``json_each`` row give (empty: NULL to ``substr``);
    cast, so that a row value compares as the column's BLOB and ``(ns, key) IN``
    searches the whole primary key, not the namespace's range."""
    part = f"json_extract(value, '$[{offset}]'), json_extract(value, '$[{length}]')"
    return f"CAST(ifnull(substr(NEW.blobs, {part}), X'') AS BLOB)"


_NAMESPACE = "CAST(json_extract(value, '$[0]') AS TEXT)"
_STATE = f"""
  DELETE FROM state WHERE NEW.sd IS NOT NULL AND (ns, key) IN (
    SELECT {_NAMESPACE}, {_blob("1", "2")} FROM json_each(NEW.sd));
  INSERT OR REPLACE INTO state
    SELECT {_NAMESPACE}, {_blob("1", "2")}, {_blob("3", "4")} FROM json_each(NEW.s);"""


def deletions(ids: str) -> tuple[str, ...]:
    """The statements that delete the instances listed by the JSON array ``ids`` (SQL: a
    column or a parameter; NULL: none) with everything of theirs: rows, journals,
    buffered events, waits, work rows and ended task attempts (``Batch.expired``).

    In the state document's trigger (a batch with a retention pass stays one statement:
    as separate statements, each gave the GIL back to the engine thread, and the commit
    thread waited to win it again while holding the write lock), and row by row
    (``_commit_rows``). Each is guarded by the array's presence, a constant term SQLite
    tests once: waits and work have no index by instance, and ``IN`` of an empty list
    would still scan them (45 ms per 300,000 waits)."""
    listed = f"{ids} IS NOT NULL"
    chosen = f"SELECT value FROM json_each({ids})"
    by_instance = [
        f"DELETE FROM {table} WHERE {listed} AND {column} IN ({chosen})"
        for table, column in (
            ("instances", "id"),
            ("journal", "instance_id"),
            ("inbox", "instance_id"),
            # no index by instance: live state only, and one scan each per pass of
            # deletions is cheaper than an index paid on every commit
            ("waits", "instance_id"),
            ("work", "instance_id"),
        )
    ]
    # ended attempts only (an open one would be a bug upstream: leave it visible); the
    # ids are "task:<instance>:<seq>:<attempt>", a range of the unique index on id
    tasks = (
        f"DELETE FROM tasks WHERE {listed} AND ended = 1 AND n IN (SELECT t.n FROM "
        f"json_each({ids}) AS x JOIN tasks AS t ON t.id >= 'task:' || x.value "
        "|| ':' AND t.id < 'task:' || x.value || ';')"
    )
    return (*by_instance, tasks)


def _rows(
    table: str, column: str, columns: int, blobs: Collection[int] = (), *, upsert: str = ""
) -> str:
    """``INSERT OR REPLACE`` into ``table`` of the rows of the document's ``column``.
    Element ``i`` of a row fills column ``i``; ``blobs`` columns become BLOBs: a JSON
    string element gives its text, an array element its JSON text (byte for byte what
    orjson wrote: SQLite keeps the input's text)."""
    values = ", ".join(
        f"CAST(json_extract(value, '$[{i}]') AS BLOB)"
        if i in blobs
        else f"json_extract(value, '$[{i}]')"
        for i in range(columns)
    )
    rows = f"SELECT {values} FROM json_each(NEW.{column})"
    if upsert:  # WHERE true: without it, SQLite would parse ON CONFLICT as a join's ON
        return f"INSERT INTO {table} {rows} WHERE true{upsert};"
    return f"INSERT OR REPLACE INTO {table} {rows};"


# Appended records: offsets continue each partition's log densely, in the document's
# order, skipping event ids the log already holds. (SQLite computes the whole SELECT
# before inserting, because it reads the table it inserts into.)
_APPEND_ROWS = f"""
  INSERT INTO log(id, key, value, ts, event_id, etype)
  SELECT (a.part << {SHIFT}) | (ifnull((
           SELECT max(l.id) FROM log AS l
           WHERE l.id >= (a.part << {SHIFT}) AND l.id < ((a.part + 1) << {SHIFT})
         ) & {MASK}, -1) + a.n),
         a.k, a.v, NEW.ts, a.eid, a.etype
  FROM (
    SELECT json_extract(e.value, '$[0]') AS part, json_extract(e.value, '$[1]') AS k,
           CAST(json_extract(e.value, '$[2]') AS BLOB) AS v,
           json_extract(e.value, '$[3]') AS eid, json_extract(e.value, '$[4]') AS etype,
           row_number() OVER (PARTITION BY json_extract(e.value, '$[0]') ORDER BY e.key) AS n
    FROM json_each(NEW.a) AS e
    WHERE json_extract(e.value, '$[3]') IS NULL
       OR NOT EXISTS (SELECT 1 FROM log AS d WHERE d.event_id = json_extract(e.value, '$[3]'))
  ) AS a;"""

# Task attempts (``Batch.tasks``, see ``tasks.py``): a published attempt is inserted
# once (publishing it again changes nothing: not its lease, not its end); an ended one
# keeps its row, marked ended, so a late result is told "ended" rather than "unknown".
_PUBLISH_TASKS = """
  INSERT OR IGNORE INTO tasks(id, queue, request, deadline, created)
  SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
         CAST(json_extract(value, '$[2]') AS BLOB), json_extract(value, '$[3]'),
         NEW.ts
  FROM json_each(NEW.t);"""
_END_TASKS = """
  UPDATE tasks SET ended = 1, worker = NULL
  WHERE ended = 0 AND id IN (SELECT value FROM json_each(NEW.td));"""


# A batch is applied by ONE statement: an insert of its JSON document into a
# per-connection view whose trigger spreads it over the tables. Row by row (executemany),
# sqlite3 released the GIL for every row, and the commit thread had to win it back from
# the busy engine each time, a thousand times per commit while holding the database's
# write lock, so commits stalled senders and each other instead of overlapping the
# engine. Alone, the statement is its own transaction. (Statements beside it cost the
# same: a retention pass's deletions, trim and keyed state as eight statements made its
# batches' commits take twice as long; docs/benchmarks.md.)
def document_view(partitions: int) -> tuple[str, str]:
    """The statements creating the view and its trigger on a connection to a file of
    ``partitions`` log partitions."""
    return (
        f"CREATE TEMP VIEW IF NOT EXISTS state_document({', '.join(COLUMNS)}) AS SELECT "
        + ", ".join("NULL" for _ in COLUMNS),
        f"""
CREATE TEMP TRIGGER IF NOT EXISTS state_document_apply
INSTEAD OF INSERT ON state_document BEGIN
  {_APPEND_ROWS}
  {_rows("offsets", "o", 3)}
  {_rows("instances", "i", 12, blobs=(9, 10), upsert=_UPSERT_INSTANCE)}
  {_rows("journal", "j", 3, blobs=(2,))}
  DELETE FROM waits WHERE id IN (SELECT value FROM json_each(NEW.wd));
  {_rows("waits", "wa", 5)}
  DELETE FROM work WHERE id IN (SELECT value FROM json_each(NEW.kd));
  {_rows("work", "k", 8, blobs=(7,))}
  DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(NEW.bd));
  {_rows("inbox", "b", 6, blobs=(4,))}
  {_PUBLISH_TASKS}
  {_END_TASKS}
  {_STATE}
  {_body(deletions("NEW.x"))}
  {_body(trims("NEW.tl", partitions))}
END""",
    )


def _body(statements: tuple[str, ...]) -> str:
    """Statements as part of a trigger's body."""
    return "".join(f"{statement};" for statement in statements)


APPLY_DOCUMENT = f"INSERT INTO temp.state_document VALUES ({', '.join(':' + c for c in COLUMNS)})"


def instance_of(row: tuple[Any, ...]) -> InstanceRow:
    values = list(row)
    values[9] = None if values[9] is None else orjson.loads(values[9])
    values[10] = None if values[10] is None else orjson.loads(values[10])
    return InstanceRow(*values)
