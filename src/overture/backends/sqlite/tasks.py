"""``SqliteTaskQueue``: the task attempts an engine publishes, as workers take them.

One ``tasks`` row per attempt (``Batch.tasks``), written by the engine's commit and
claimed by workers with leases, every one of them a short ``BEGIN IMMEDIATE``
transaction on the same file (the engine and any number of ``overture worker``
processes). Times are wall-clock (``time.time()``): leases are compared across processes.
The claims, heartbeats and finishes of one process that arrive together share one
transaction (``SqliteTaskQueue._grouped``); one that holds only leases is not fsynced
(a lease a power loss takes back only hands its attempt out again), one with results is.

A row is never deleted here: when the engine ends an attempt (it applied a result, gave
the attempt up at its deadline, or its instance ended), or when a worker's result for it
was accepted, the row is marked ``ended``, so a late result is told ``"ended"`` and not
``"unknown"``. (Removing old rows is retention's job.)

Rejected: keeping the leases as keyed state (``Batch.state``). Workers are not engines;
they would have to commit through the engine's store, and a lease taken in another
process must be visible to the next claim at once.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ...errors import ConfigError, MalformedEvent
from ...ports import ClaimedTask, FinishOutcome, NewRecord, TaskRecord
from ...protocol import TASK_COMPLETED, TASK_FAILED, task_result_id
from ..replies import check_reply

if TYPE_CHECKING:
    from .backend import SqliteBackend

TASKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks(
  n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
  request BLOB NOT NULL, deadline REAL, created REAL NOT NULL,
  ended INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(queue, n) WHERE ended = 0;
"""
"""``n`` (the rowid) orders attempts oldest first. The partial index holds only open
attempts, in that order per queue: a claim walks it from the oldest and stops after
``limit`` claimable ones, past at most the attempts leased right now, however many
ended rows the table keeps."""

_CLAIMABLE = "queue = ? AND ended = 0 AND lease_until <= ? AND (deadline IS NULL OR deadline > ?)"
"""Claimable attempts of one queue: open, not leased (or the lease ran out), and not past
their deadline (the engine has given those up: running one would be wasted)."""
_CANDIDATES = f"SELECT n, id, queue, request FROM tasks WHERE {_CLAIMABLE} ORDER BY n LIMIT ?"
"""The oldest claimable attempts of one queue."""
_ANY = f"SELECT 1 FROM tasks WHERE {_CLAIMABLE} LIMIT 1"
"""Whether a queue has a claimable attempt (the look before the write lock)."""


_CHUNK = 500
"""Ids per ``IN (...)`` lookup: under SQLite's bound-parameter limit."""


def _check_result(task_id: str, result: NewRecord) -> None:
    expected = task_result_id(task_id)
    if result.event_id != expected:
        raise MalformedEvent(
            f"the result of task attempt {task_id!r} must have the event id "
            f"{expected!r}, not {result.event_id!r}; nothing was written"
        )
    if result.event_type not in (TASK_COMPLETED, TASK_FAILED):
        raise MalformedEvent(
            f"the result of task attempt {task_id!r} must be a {TASK_COMPLETED!r} or "
            f"{TASK_FAILED!r} event, not {result.event_type!r}; nothing was written"
        )


def check_tasks(tasks: Mapping[str, TaskRecord | None]) -> None:
    """Refuse ``Batch.tasks`` that would be stored wrong, before anything is written.

    Raises:
        ConfigError: an attempt filed under another id than its own, or without a queue
            or request bytes (a bug of whoever built the batch).
    """
    for task_id, t in tasks.items():
        if t is None:
            continue
        if t.id != task_id or not t.queue or not isinstance(t.request, bytes):
            raise ConfigError(
                f"Batch.tasks[{task_id!r}] must be the attempt {task_id!r} with a queue and "
                f"its request as bytes, not {t!r:.200}; nothing was written"
            )


def apply_tasks(c: sqlite3.Connection, tasks: Mapping[str, TaskRecord | None], now: float) -> None:
    """``Batch.tasks`` row by row, inside the commit's transaction (the document path
    does the same in ``document.py``)."""
    ended = [(task_id,) for task_id, t in tasks.items() if t is None]
    published = [(t.id, t.queue, t.request, t.deadline, now) for t in tasks.values() if t]
    if published:
        c.executemany(
            "INSERT OR IGNORE INTO tasks(id, queue, request, deadline, created) "
            "VALUES (?, ?, ?, ?, ?)",
            published,
        )
    if ended:
        c.executemany("UPDATE tasks SET ended = 1, worker = NULL WHERE id = ? AND ended = 0", ended)


def _check_lease(lease: float) -> None:
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not math.isfinite(lease):
        raise ConfigError(f"a lease must be a finite number of seconds, not {lease!r}")
    if lease <= 0:
        raise ConfigError(f"a lease must be positive, not {lease!r}")


def _check_worker(worker: str) -> None:
    if not isinstance(worker, str) or not worker:
        raise ConfigError(f"a worker needs a non-empty id, not {worker!r}")


class _Pending:
    """One caller's write (a claim, a heartbeat or a finish) waiting for its group's
    transaction."""

    __slots__ = ("error", "finish", "fsync", "lead", "result", "wake", "write")

    def __init__(
        self,
        write: Callable[[sqlite3.Connection], object] | None,
        finish: tuple[str, NewRecord] | None = None,
        *,
        fsync: bool = False,
    ) -> None:
        self.write = write  # a claim's or a heartbeat's statements
        self.finish = finish  # or a finish: (attempt id, result), done with the group's
        self.fsync = fsync  # on the disk before it is answered (a durable finish)
        self.wake = threading.Event()
        self.lead = False  # this caller commits the next group
        self.result: object = None
        self.error: BaseException | None = None


class SqliteTaskQueue:
    """``ports.TaskQueue`` on the backend's file (``SqliteBackend.tasks``)."""

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend
        self._grouping = threading.Lock()  # guards the two below
        self._queue: list[_Pending] = []  # writes waiting for the next transaction
        self._leading = False  # a caller is committing them

    def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[ClaimedTask]:
        """See ``ports.TaskQueue.claim``.

        Raises:
            ConfigError: no queue, an empty queue name, an empty worker id, a negative
                ``limit`` or a lease that is not a positive number (nothing is claimed).
        """
        if isinstance(queues, str):
            raise ConfigError(f"queues must be a list of names, not the string {queues!r}")
        wanted = list(dict.fromkeys(queues))
        if not wanted or not all(isinstance(q, str) and q for q in wanted):
            raise ConfigError(f"claim needs one or more non-empty queue names, not {queues!r}")
        _check_worker(worker)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"limit must be a non-negative integer, not {limit!r}")
        _check_lease(lease)
        if limit == 0:
            return []
        backend = self._backend
        now = time.time()
        # Look first without the write lock: an idle worker's claims must not queue up
        # behind the engine's commits for nothing.
        if not any(backend._query(_ANY, (queue, now, now)) for queue in wanted):
            return []

        def take(c: sqlite3.Connection) -> list[ClaimedTask]:
            stamp = time.time()  # the lock may have taken a while
            rows = self._candidates(
                lambda sql, args: c.execute(sql, args).fetchall(), wanted, stamp, limit
            )
            c.executemany(
                "UPDATE tasks SET worker = ?, lease_until = ? WHERE n = ?",
                [(worker, stamp + lease, row[0]) for row in rows],
            )
            return [ClaimedTask(row[1], row[2], row[3], stamp + lease) for row in rows]

        # A lease a crash loses costs nothing: the attempt is handed out again (at least
        # once per attempt), so a claim does not wait for an fsync of its own.
        claimed: list[ClaimedTask] = self._grouped([_Pending(take)])
        return claimed

    @staticmethod
    def _candidates(
        query: Callable[[str, tuple[object, ...]], list[tuple[int, str, str, bytes]]],
        queues: list[str],
        now: float,
        limit: int,
    ) -> list[tuple[int, str, str, bytes]]:
        """The oldest ``limit`` claimable attempts of ``queues`` (one indexed walk per
        queue, merged by age: an ``IN`` over queues would sort every open row)."""
        rows: list[tuple[int, str, str, bytes]] = []
        for queue in queues:
            rows.extend(query(_CANDIDATES, (queue, now, now, limit)))
        rows.sort()
        return rows[:limit]

    def heartbeat(self, task_id: str, worker: str, lease: float) -> bool:
        """See ``ports.TaskQueue.heartbeat``: True while the attempt is open and
        ``worker`` holds it (a lease that ran out without anyone claiming the attempt
        since is still the worker's).

        Raises:
            ConfigError: an empty worker id or a lease that is not a positive number.
        """
        _check_worker(worker)
        _check_lease(lease)

        def extend(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE tasks SET lease_until = ? WHERE id = ? AND worker = ? AND ended = 0",
                (time.time() + lease, task_id, worker),
            )
            return cur.rowcount == 1

        kept: bool = self._grouped([_Pending(extend)])  # a lease, as a claim's: no fsync
        return kept

    def finish(
        self, task_id: str, worker: str, result: NewRecord, *, durable: bool = True
    ) -> FinishOutcome:
        """See ``ports.TaskQueue.finish``: in one transaction, the result is appended to
        the log (by the log's own append, so its event id deduplicates) and the attempt
        ends. A second result of an attempt, from any worker, is ``"ended"``. Finishes
        called at the same time (from several threads) share one transaction, fsynced
        if one of them is ``durable`` (at ``synchronous=NORMAL`` otherwise: W5 1.10x the
        throughput, 0.79x the one-at-a-time p50; docs/benchmarks.md).

        Raises:
            ConfigError: an empty worker id.
            MalformedEvent: ``result`` is not this attempt's result (its event id must be
                ``protocol.task_result_id(task_id)``, its type completed or failed, its
                partition the request's ``reply.partition``); nothing is written.
        """
        (outcome,) = self.finish_many(worker, [(task_id, result)], durable=durable)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def finish_many(
        self, worker: str, finishes: Sequence[tuple[str, NewRecord]], *, durable: bool = True
    ) -> list[FinishOutcome | Exception]:
        """See ``ports.TaskQueue.finish_many``: the valid ones join one group (one
        transaction, one lookup of their requests), each checked as :meth:`finish` checks
        it.

        Raises:
            ConfigError: an empty worker id (nothing is written).
        """
        _check_worker(worker)
        requests = self._requests([task_id for task_id, _ in finishes])
        out: list[FinishOutcome | Exception] = []
        group: list[tuple[int, _Pending]] = []  # where in ``out``, and the write
        for task_id, result in finishes:
            try:
                _check_result(task_id, result)
                check_reply(task_id, requests.get(task_id), result)
            except MalformedEvent as error:
                out.append(error)
                continue
            group.append((len(out), _Pending(None, (task_id, result), fsync=durable)))
            out.append("unknown")  # replaced below
        if group:
            self._grouped([pending for _, pending in group])
            for i, pending in group:
                if pending.error is None:
                    out[i] = cast(FinishOutcome, pending.result)  # a finish's: an outcome
                elif isinstance(pending.error, Exception):
                    out[i] = pending.error
                else:
                    raise pending.error  # interrupted: nothing to report per attempt
        return out

    def _grouped(self, writes: list[_Pending]) -> Any:
        """Run ``writes`` (one caller's: a claim, a heartbeat, or finishes) in a
        transaction shared with the writes other threads make at the same time, and
        return what the first one returned once that transaction is committed (each
        write's own result and error are on it).

        Group commit: the writes that arrive while one transaction (and its fsync) runs
        share the next one, so a worker with many slots pays one transaction for a group
        of results and the claim of the next attempts, rather than one each (a single
        finish: ~0.5 ms, nearly all of it the fsync). One caller's writes are queued
        together, so they are in one group. The group is fsynced if any of its writes
        needs it (a finish). The group's finishes are done together, a few statements
        for all of them: each statement is a moment the thread may wait for the GIL
        while it holds the file's write lock. Each leader commits one group, so no
        caller serves the others for long. A group that fails is redone one write per
        transaction, so only a bad one fails.
        """
        first = writes[0]
        with self._grouping:
            self._queue.extend(writes)
            first.lead = not self._leading
            self._leading = True
        if not first.lead:
            first.wake.wait()  # its group was committed, or it was made the leader
        if first.lead:
            self._lead()
        if first.error is not None:
            raise first.error
        return first.result

    def _lead(self) -> None:
        """Commit every waiting write (the leader's own among them) in one transaction,
        then hand the lead to the first write that arrived meanwhile."""
        with self._grouping:
            group, self._queue = self._queue, []
        try:
            self._commit(group)
        except BaseException:
            for one in group:
                try:
                    self._commit([one])
                except BaseException as error:  # handed to its caller
                    one.error = error
        with self._grouping:
            heir = self._queue[0] if self._queue else None
            if heir is None:
                self._leading = False
            else:
                heir.lead = True
        for one in group:
            one.lead = False
            one.wake.set()
        if heir is not None:
            heir.wake.set()

    def _commit(self, group: list[_Pending]) -> None:
        backend = self._backend

        def run(c: sqlite3.Connection) -> list[object]:
            finishes = [one.finish for one in group if one.finish is not None]
            ended = iter(self._end(c, finishes) if finishes else ())
            return [next(ended) if one.write is None else one.write(c) for one in group]

        with backend._lock, backend._writing():
            results: list[object] = backend._write(run, fsync=any(one.fsync for one in group))
        for one, result in zip(group, results, strict=True):
            one.result = result
        if "accepted" in results:
            backend.ring()  # the engine applies the results

    def _end(
        self, c: sqlite3.Connection, finishes: Sequence[tuple[str, NewRecord]]
    ) -> list[FinishOutcome]:
        """End the open attempts among ``finishes`` and append their results, as if one
        after the other: an attempt never published is ``"unknown"``, one already over
        (or finished earlier in this list) ``"ended"``."""
        ids = list(dict.fromkeys(task_id for task_id, _ in finishes))
        ended: dict[str, int] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            ended.update(c.execute(f"SELECT id, ended FROM tasks WHERE id IN ({marks})", chunk))
        outcomes: list[FinishOutcome] = []
        taken: list[int] = []  # where in ``finishes`` the attempts to end are
        for i, (task_id, _) in enumerate(finishes):
            state = ended.get(task_id)
            if state is None:
                outcomes.append("unknown")
            elif state:
                outcomes.append("ended")
            else:
                ended[task_id] = 1  # a second result for it in this group is "ended"
                taken.append(i)
                outcomes.append("accepted")
        if taken:
            c.executemany(
                "UPDATE tasks SET ended = 1, worker = NULL WHERE id = ?",
                [(finishes[i][0],) for i in taken],
            )
            appended = self._backend._append(c, [finishes[i][1] for i in taken])
            for i, where in zip(taken, appended, strict=True):
                if where is None:
                    # a result with this id is on the log already (written by another
                    # path): this one is a duplicate, and the attempt is over all the same
                    outcomes[i] = "ended"
        return outcomes

    def request(self, task_id: str) -> bytes | None:
        """See ``ports.TaskQueue.request``: any attempt published to this file."""
        return self._requests([task_id]).get(task_id)

    def _requests(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The requests of the attempts among ``ids`` published to this file."""
        found: dict[str, bytes] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, request FROM tasks WHERE id IN ({marks})"
            found.update(
                (task_id, bytes(request))
                for task_id, request in self._backend._query(sql, tuple(chunk))
            )
        return found

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """See ``ports.TaskQueue.subscribe``: woken by the engine's commits that publish
        attempts (``Doorbell.watch_tasks``)."""
        return self._backend._bell.watch_tasks(wake)
