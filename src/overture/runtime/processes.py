"""The engine's participant in the partition loop: processes and handlers.

It routes each partition's records (``Router``), runs due work and applies outcomes
(``Work``, ``Instances``), folds the quick sync steps a batch started into that batch
(``sync_fold``), and flushes the instances the batch changed to rows before the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from ..ports import Record
from .executor import Executor
from .instances import Instances
from .router import Router
from .staging import Outcome, Stage
from .tasks import Tasks
from .work import Work

_FOLD_ROUNDS_WAITING = 4
"""A batch waits for its sync calls at most this many times ``sync_fold`` in all."""


class Processes:
    """Runs process instances and handlers in the loop's batches (a ``Participant``).

    Args:
        router: routes the records.
        instances: the live instances.
        work: work rows and outcomes.
        tasks: applies due task rows (deadlines, retries after their backoff).
        executor: runs steps and handlers (its rounds count the sync calls to fold).
        clock_now: the engine clock (instance rows record their update time by it).
        sync_fold: seconds a batch may wait per fold round (0: never fold).
        stats: the engine's counters (``folded``).
    """

    def __init__(
        self,
        router: Router,
        instances: Instances,
        work: Work,
        tasks: Tasks,
        executor: Executor,
        clock_now: Callable[[], float],
        sync_fold: float,
        stats: dict[str, int],
    ) -> None:
        self._router = router
        self._instances = instances
        self._work = work
        self._tasks = tasks
        self._executor = executor
        self._now = clock_now
        self._sync_fold = sync_fold
        self._stats = stats

    # -- Participant -----------------------------------------------------------------------

    def begin(self, stage: Stage, now: float) -> None:
        self._executor.begin_round()

    def consume(self, stage: Stage, records: Sequence[Record], now: float) -> None:
        self._router.route_all(stage, records, now)

    def advance(self, stage: Stage, now: float) -> bool:
        did = self._take_due(stage, now)
        # Outcomes include steps that finished eagerly while this batch was being built;
        # the stage's budget bounds a process that loops over trivial steps forever.
        while stage.outcome_budget > 0:
            outcome = self._work.next_outcome()
            if outcome is None:
                break
            did = True
            stage.outcome_budget -= 1
            self.apply(stage, outcome, now)
        return did

    def seal(self, stage: Stage, now: float) -> None:
        self._fold(stage, now)
        # Eager first attempts left over by the budget have no stored row yet: give them
        # one now, or a crash after this commit would leave their steps scheduled but never run.
        for outcome in self._work.unstored():
            self._instances.store_eager(stage, outcome, now)
        self._instances.flush(stage, self._now())  # after the steps this batch ran

    def settled(self, keep: Collection[str]) -> None:
        self._instances.evict(keep=keep)

    # -- work ------------------------------------------------------------------------------

    def _take_due(self, stage: Stage, now: float) -> bool:
        rows = self._work.pop_due(now)
        self._instances.read_ahead(stage, {r.instance_id for r in rows if r.instance_id})
        for row in rows:
            if row.kind == "timer":
                self._instances.fire_timer(stage, row, now)
            elif row.kind == "handler":
                self._work.run_handler(stage, row, now)
            elif row.kind == "task":
                self._tasks.due(stage, row, now)
            else:
                self._instances.run_step(stage, row, now)
        return bool(rows)

    def apply(self, stage: Stage, outcome: Outcome, now: float) -> None:
        """Apply one reported outcome of a step or handler attempt."""
        if not outcome.stored:
            self._instances.step_outcome(stage, outcome, None, now)
            return
        row = self._work.current(outcome)
        if row is None:
            return
        if row.kind == "handler":
            self._work.handler_outcome(stage, row, outcome, now)
        else:
            self._instances.step_outcome(stage, outcome, row, now)

    def _fold(self, stage: Stage, now: float) -> None:
        """Apply in this batch the outcomes of the quick sync calls it started (see
        ``sync_fold``), within what is left of the stage's outcome budget.

        Each round waits for the calls started since the previous one (applying an
        outcome usually starts the instance's next step): at most ``sync_fold`` per
        round, at most ``_FOLD_ROUNDS_WAITING`` times that per batch, so a slow call
        costs the batch one bounded wait, not one per round."""
        executor = self._executor
        limit = self._sync_fold
        if not limit:
            return
        clock = time.monotonic
        left = limit * _FOLD_ROUNDS_WAITING  # the batch's whole waiting allowance
        work = self._work
        while (
            left > 0 and stage.outcome_budget > 0 and executor.round_started and not work.stopping
        ):
            began = clock()
            executor.wait_round(min(limit, left))  # reports through the outcomes' done
            left -= clock() - began
            executor.begin_round()  # count only what applying these outcomes starts
            while stage.outcome_budget > 0:
                outcome = work.next_outcome()
                if outcome is None:
                    break
                stage.outcome_budget -= 1
                self._stats["folded"] += 1
                self.apply(stage, outcome, now)
