"""Engine driver of the crash-point tests: ``overture run`` that exits mid-commit.

    python -m tests.durability.crashpoint COMMIT STATEMENT -- run APP --backend URL ...

runs the CLI with the arguments after ``--``, and exits the process with ``os._exit``
(no cleanup, no rollback: as kill -9 would) when the ``STATEMENT``-th SQL statement of the
``COMMIT``-th commit that carries consumed offsets is about to start (1-based: statement 1
exits before anything of that commit ran). Exit code 75 then; when that commit ran fewer
statements, the process exits with 76 right after it returned (before the engine learns
that it committed), and prints (on stderr) the commit's statement count and which commit
path it took: ``document`` (one statement), ``extras`` (the document and the rest of the
batch in an explicit transaction) or ``rows`` (an explicit transaction without it).

The hook is test code only: it wraps ``SqliteBackend.commit`` in this process and traces
the writer connection with ``sqlite3.Connection.set_trace_callback``, which reports every
statement (each ``executemany`` row, and each trigger subprogram of the one-statement
JSON document commit) before it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from overture.backends.sqlite import SqliteBackend
from overture.cli import main
from overture.ports import Batch

CRASHED = 75
PAST_END = 76


def commit_path(statements: Sequence[str]) -> str:
    """Which SQLite commit path one commit's traced statements took: ``document`` (the
    one statement, its own transaction), ``extras`` (the document and the rest of the
    batch in an explicit transaction) or ``rows`` (an explicit transaction without it)."""
    if not statements or not statements[0].upper().startswith("BEGIN"):
        return "document"
    return "extras" if any("state_document" in s for s in statements) else "rows"


def install(target_commit: int, target_statement: int) -> None:
    original = SqliteBackend.commit
    commits = 0

    def commit(self: SqliteBackend, batch: Batch) -> None:
        nonlocal commits
        if not batch.offsets:
            original(self, batch)
            return
        commits += 1
        if commits != target_commit:
            original(self, batch)
            return
        statements = 0
        texts: list[str] = []

        def trace(sql: Any) -> None:
            nonlocal statements
            statements += 1
            if statements == target_statement:
                os._exit(CRASHED)
            texts.append(str(sql)[:100])

        self._conn.set_trace_callback(trace)
        try:
            original(self, batch)
        finally:
            self._conn.set_trace_callback(None)
        print(f"statements={statements} path={commit_path(texts)}", file=sys.stderr, flush=True)
        os._exit(PAST_END)

    SqliteBackend.commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    split = sys.argv.index("--")
    install(int(sys.argv[1]), int(sys.argv[2]))
    sys.argv = ["overture", *sys.argv[split + 1 :]]
    main()
