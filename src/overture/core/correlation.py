"""Correlation: which waiting instances an event feeds. Pure, in-memory index."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from ..ports import WaitRow

_K = TypeVar("_K")


class WaitIndex:
    """Waits indexed by (event type, correlation key) and by instance.

    An event is delivered to *every* wait registered for its (type, key) at the moment it
    is routed, in registration order.
    """

    def __init__(self, waits: Iterable[WaitRow] = ()) -> None:
        self._by_match: dict[tuple[str, str | None], list[WaitRow]] = {}
        self._by_instance: dict[str, list[WaitRow]] = {}
        for wait in waits:
            self.add(wait)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_instance.values())

    def add(self, wait: WaitRow) -> None:
        self._by_match.setdefault((wait.event_type, wait.key), []).append(wait)
        self._by_instance.setdefault(wait.instance_id, []).append(wait)

    def remove(self, wait: WaitRow) -> bool:
        """Forget a wait; returns whether it was present."""
        found = _discard(self._by_match, (wait.event_type, wait.key), wait)
        _discard(self._by_instance, wait.instance_id, wait)
        return found

    def match(self, event_type: str, key: str | None) -> list[WaitRow]:
        """The waits an event of this type and key satisfies (a copy)."""
        return list(self._by_match.get((event_type, key), ()))

    def of_instance(self, instance_id: str) -> list[WaitRow]:
        return list(self._by_instance.get(instance_id, ()))


def _discard(index: dict[_K, list[WaitRow]], key: _K, wait: WaitRow) -> bool:
    waits = index.get(key)
    if waits is None or wait not in waits:
        return False
    waits.remove(wait)
    if not waits:
        del index[key]
    return True
