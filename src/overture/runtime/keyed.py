"""Keyed state as the partition loop's participants see it.

A participant (a stream processor's windows, a pattern's buffers, task leases) keeps its
state as namespaced key-value entries (``ports.Batch.state``): it stages ``put`` and
``delete`` in the batch being built (:meth:`Stage.put_state`, :meth:`Stage.delete_state`),
so the entries commit in the same transaction as the batch's offsets, and it reads them
back here. A read must see what this batch staged and what the batch still being
committed (in a thread beside this one) wrote, which the store cannot show yet: so a
read looks at the stage first, then the batch in flight, then the store.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ports import Batch, StateView
from .staging import Stage


class KeyedState:
    """Reads of keyed state through the batches not yet visible in the store.

    Args:
        store: the committed state.
        in_flight: the batch being committed, if any (``PartitionLoop.in_flight``).
    """

    def __init__(self, store: StateView, in_flight: Callable[[], Batch | None]) -> None:
        self._store = store
        self._in_flight = in_flight

    def get(self, stage: Stage, namespace: str, key: bytes) -> bytes | None:
        """The entry's newest value, or None if it has none (never set, or deleted)."""
        entry = (namespace, key)
        for batch in self._unseen(stage):
            if entry in batch.state:
                return batch.state[entry]
        return self._store.get(namespace, key)

    def scan(self, stage: Stage, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """The namespace's entries whose key starts with ``prefix``, in key byte order,
        with their newest values."""
        entries = dict(self._store.scan(namespace, prefix))
        for batch in reversed(self._unseen(stage)):  # oldest first, the stage last
            for (ns, key), value in batch.state.items():
                if ns != namespace or not key.startswith(prefix):
                    continue
                if value is None:
                    entries.pop(key, None)
                else:
                    entries[key] = value
        return sorted(entries.items())

    def _unseen(self, stage: Stage) -> list[Batch]:
        """The batches whose changes the store does not show yet, newest first."""
        in_flight = self._in_flight()
        return [stage.batch] if in_flight is None else [stage.batch, in_flight]
