"""``overture gc``: a retention pass on demand, and what it freed.

On SQLite it runs the engine's own passes (``runtime/retention.py``: finished instances
past ``--retention``, the consumed log older than it, dead letters past
``--dlq-retention``, the deleted ids remembered past their time), each pass one
transaction of at most 200 instances, until a pass finds nothing more; then the pages
they freed go back to the file system and the WAL is checkpointed (``--vacuum``: a full
``VACUUM``, which also turns ``auto_vacuum=INCREMENTAL`` on for a file created before
it). It prints the rows deleted per kind and the bytes of the file and WAL before and
after.

It refuses to run while an engine runs on the file (it takes the engine's lock): the
engine does these passes itself, and a second deleter beside it is not safe. The engine
holds instances in its cache and a batch in flight that gc cannot see: gc could delete
an instance that the engine's next commit writes rows of again (half-deleted), or
delete dead letters a batch being committed is replaying. A crash (kill -9) of gc loses
at most the pass in progress, never half of one.

On Kafka the engines own the state (their changelog, written only by each partition's
transactional producer) and the broker deletes the events topic's old segments: gc
deletes nothing there; it reports what the engines' passes have pending.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Annotated

import typer

from ..backends import open_backend
from ..backends.sqlite import SqliteBackend
from ..backends.sqlite.files import connect
from ..backends.sqlite.hygiene import FileSize, file_size, incremental, tidy, vacuum
from ..errors import EngineBusy
from ..ports import Backend, StateView
from ..retention import DEFAULT_RETENTION, describe_retention
from ..runtime.keyed import KeyedState
from ..runtime.retention import Retention
from ..runtime.staging import Stage
from .common import (
    DEFAULT_BACKEND,
    BackendOption,
    CliError,
    handle_errors,
    refuse_memory,
    retentions,
)

MAX_PASSES = 1_000_000
"""A safety bound: gc stops after this many passes (200 instances each) whatever is left."""


@dataclass
class Freed:
    """What ``overture gc`` deleted (or, on Kafka, found pending) and the file's bytes."""

    instances: int = 0
    log_events: int = 0
    dead_letters: int = 0
    passes: int = 0
    file_before: int = 0
    wal_before: int = 0
    file_after: int = 0
    wal_after: int = 0
    vacuumed: bool = False
    auto_vacuum: bool = False


class _NoCache:
    def forget(self, instance_ids: object) -> None:
        """gc runs with no engine: no cache to drop the deleted instances from."""


def collect(
    backend: SqliteBackend,
    retention: timedelta | None,
    dlq_retention: timedelta | None,
    *,
    full_vacuum: bool = False,
) -> Freed:
    """Run retention passes on an SQLite backend until one finds nothing more.

    Raises:
        EngineBusy: an engine runs on the file.
    """
    release = backend.engine_lock()
    try:
        before = file_size(backend.path)
        freed = Freed(file_before=before.file, wal_before=before.wal)
        store = backend.store
        stats = {"expired": 0, "dead_letters_expired": 0}
        retain = Retention(
            store,
            retention,
            _NoCache(),
            lambda: None,
            stats,
            KeyedState(store, lambda: None),
            trims_log=retention is not None,
            dlq_retention=dlq_retention,
        )
        while freed.passes < MAX_PASSES:
            stage = Stage("overture.gc", 0)
            now = time.time()
            if not retain.pass_now(stage, now) and stage.batch.empty():
                break
            retain.seal(stage, now)
            logged = _log_rows(backend.path)
            backend.commit(stage.batch)
            freed.passes += 1
            trimmed = logged - _log_rows(backend.path)
            freed.log_events += trimmed
            letters = sum(v is None for v in stage.batch.dead_letters.values())
            freed.dead_letters += letters
            freed.instances += len(stage.batch.expired)
            if not (stage.batch.expired or letters or trimmed):
                break
        conn = connect(backend.path)
        try:
            if full_vacuum:
                vacuum(conn)
                freed.vacuumed = True
            else:
                while tidy(conn):  # every free page (tidy returns a bounded number)
                    pass
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            freed.auto_vacuum = incremental(conn)
        finally:
            conn.close()
        after = file_size(backend.path)
        freed.file_after, freed.wal_after = after.file, after.wal
        return freed
    finally:
        release()


def pending(store: StateView, retention: timedelta | None, dlq: timedelta | None) -> Freed:
    """What the engines' passes have still to delete (Kafka: gc deletes nothing)."""
    now = time.time()
    found = Freed()
    if retention is not None:
        found.instances = len(store.expired(now - retention.total_seconds(), 10**9)[0])
    if dlq is not None:
        found.dead_letters = len(store.expired_dead_letters(now - dlq.total_seconds(), 10**9)[0])
    return found


def _log_rows(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM log").fetchone()[0])
    finally:
        conn.close()


def register(cli: typer.Typer) -> None:
    """Add ``overture gc`` to the command line."""

    @cli.command()
    @handle_errors
    def gc(
        retention: Annotated[
            str,
            typer.Option(
                "--retention",
                metavar="DURATION",
                help="Delete finished instances (and the consumed log) older than this "
                "(as overture run --retention: 12h, 7d, 0, forever).",
            ),
        ] = describe_retention(DEFAULT_RETENTION),
        dlq_retention: Annotated[
            str,
            typer.Option(
                "--dlq-retention",
                metavar="DURATION",
                help="Also delete dead letters older than this (default forever: kept).",
            ),
        ] = "forever",
        full_vacuum: Annotated[
            bool,
            typer.Option(
                "--vacuum",
                help="Then rewrite the file without its free pages (VACUUM) and turn "
                "auto_vacuum=INCREMENTAL on (a file from before it).",
            ),
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
        backend: BackendOption = DEFAULT_BACKEND,
    ) -> None:
        """Run a retention pass now and print what it freed (rows and bytes). SQLite
        only with no engine running; on Kafka it reports what the engines have pending."""
        kept, letters = retentions(retention, dlq_retention)
        refuse_memory(backend)
        opened: Backend = open_backend(backend)
        try:
            if not isinstance(opened, SqliteBackend):
                if full_vacuum:
                    raise CliError(
                        "--vacuum is for an SQLite file; on Kafka the broker compacts and "
                        "deletes segments itself"
                    )
                found = pending(opened.store, kept, letters)
                _print_pending(found, kept, letters, as_json)
                return
            try:
                freed = collect(opened, kept, letters, full_vacuum=full_vacuum)
            except EngineBusy:
                raise CliError(
                    f"an engine is running on {opened.path} (it holds {opened.path}.lock): "
                    "its own retention passes do what gc does (overture run --retention, "
                    "--dlq-retention); gc runs only with the engine stopped, because rows "
                    "the engine holds in memory (cached instances, the batch it is "
                    "committing) could be written back after gc deleted them"
                ) from None
        finally:
            opened.close()
        if as_json:
            typer.echo(json.dumps(asdict(freed)))
            return
        what = f"retention {describe_retention(kept)}"
        what += ", dead letters " + ("kept" if letters is None else describe_retention(letters))
        typer.echo(f"gc of {opened.path} ({what}), {freed.passes} pass(es):")
        typer.echo(f"  instances deleted     {freed.instances:>12,}")
        typer.echo(f"  log events deleted    {freed.log_events:>12,}")
        typer.echo(f"  dead letters deleted  {freed.dead_letters:>12,}")
        typer.echo(f"  file  {_bytes(freed.file_before, freed.file_after)}")
        typer.echo(f"  WAL   {_bytes(freed.wal_before, freed.wal_after)}")
        before = FileSize(freed.file_before, freed.wal_before).total
        after = FileSize(freed.file_after, freed.wal_after).total
        typer.echo(f"  freed {before - after:,} bytes")
        if freed.vacuumed:
            typer.echo("  vacuumed (VACUUM); auto_vacuum=INCREMENTAL from now on")
        elif not freed.auto_vacuum:
            typer.echo(
                "  this file predates auto_vacuum=INCREMENTAL: its free pages are reused "
                "but not returned; `overture gc --vacuum` converts it"
            )


def _bytes(before: int, after: int) -> str:
    return f"{before:>12,} -> {after:>12,} bytes"


def _print_pending(
    found: Freed, kept: timedelta | None, letters: timedelta | None, as_json: bool
) -> None:
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "pending_instances": found.instances,
                    "pending_dead_letters": found.dead_letters,
                    "deleted": 0,
                }
            )
        )
        return
    typer.echo(
        "on Kafka gc deletes nothing: the engines delete finished instances in their own "
        "passes (changelog tombstones, overture run --retention) and the broker deletes "
        "the events topic's old segments (its retention.ms)"
    )
    typer.echo(
        f"  finished instances older than {describe_retention(kept)}, pending: {found.instances:,}"
    )
    if letters is not None:
        typer.echo(
            f"  dead letters older than {describe_retention(letters)}, pending: "
            f"{found.dead_letters:,} (deleted by engines run with --dlq-retention)"
        )
