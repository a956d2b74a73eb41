"""The waits of this engine's instances: staged with the batch and indexed in memory.

A wait row is stored with the batch that started it and deleted with the batch that
ends it (its event arrived, it timed out, its instance finished or was cancelled). The
index (``core.correlation.WaitIndex``) holds every wait of the owned partitions, loaded
at start, so routing an event never reads the store to find its waiters.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.correlation import WaitIndex
from ..ports import WaitRow
from .remote import RemoteWaits
from .staging import Stage
from .work import Work


class Waits:
    """Starts and ends waits (see the module docstring).

    Args:
        index: the wait index (shared with ``RemoteWaits``, which keeps the
            subscriptions of other partitions in it).
        work: whose timer row is a wait's timeout (it shares the wait's id).
        remote: withdraws the subscription of a wait on a foreign key.
    """

    def __init__(self, index: WaitIndex, work: Work, remote: RemoteWaits) -> None:
        self._index = index
        self._work = work
        self._remote = remote
        # the index's own lookups, bound once: routing calls them for every record
        self.match: Callable[[str, str | None], list[WaitRow]] = index.match
        """The waits an event of this type and key resolves (or, for subscriptions of
        another partition, is forwarded to)."""
        self.of_instance: Callable[[str], list[WaitRow]] = index.of_instance
        """The waits of one instance."""

    def load(self, rows: list[WaitRow]) -> None:
        """Index the stored waits (at start)."""
        for row in rows:
            self._index.add(row)

    def add(self, stage: Stage, wait: WaitRow, home: int) -> None:
        """Start a wait of an instance of partition ``home``; one on a key another
        partition owns subscribes there."""
        stage.waits.put(wait, True, created=True)
        self._index.add(wait)
        if self._remote.foreign(wait.key):
            self._remote.subscribe(stage, wait, home)

    def clear(self, stage: Stage, wait: WaitRow, *, withdraw: bool = True) -> None:
        """Forget a wait (and its timeout). ``withdraw``: also cancel its subscription on
        another partition, if it has one (not needed once that partition delivered)."""
        stage.waits.delete(wait)
        self._index.remove(wait)
        if withdraw and wait.home is None and self._remote.foreign(wait.key):
            self._remote.unsubscribe(stage, wait)
        # a wait's timeout timer shares its id
        timer = self._work.get(f"{wait.instance_id}:{wait.seq}")
        if timer is not None and timer.kind == "timer":
            self._work.clear(stage, timer.id)
