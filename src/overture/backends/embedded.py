"""How an embedded backend (SQLite, ``memory://``) hands its partitions to engines.

An embedded log is one unit: one engine owns every partition of it. Its claim
(:meth:`~overture.ports.Backend.claim`) therefore hands the backend itself over at once, as
partition 0; the engine's ``engine_lock`` (a file lock, or a flag of the memory log) is
what makes that engine the only one. So the host runs embedded and Kafka engines through
the same door.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..ports import Claim, EngineBackend


def missing_letters(ids: Sequence[str]) -> str:
    """What ``delete_dead_letters`` says of ids that name no dead letter."""
    return f"no dead letter(s) {', '.join(map(repr, ids))}; nothing was deleted"


class WholeLog:
    """The claim of an embedded backend: every partition, handed over as partition 0."""

    def __init__(self, on_revoke: Callable[[list[int]], None]) -> None:
        self._on_revoke = on_revoke
        self._held = True

    @property
    def assigned(self) -> list[int]:
        return [0] if self._held else []

    def caught_up(self) -> bool:
        """Always: the engine reads the log itself, nothing sits in between."""
        return True

    def close(self) -> None:
        if self._held:
            self._held = False
            self._on_revoke([0])


def claim_whole(
    backend: EngineBackend,
    on_assign: Callable[[Mapping[int, EngineBackend]], None],
    on_revoke: Callable[[list[int]], None],
) -> Claim:
    """Hand ``backend`` to ``on_assign`` as the one partition set (raises what the
    engine's start raised in it, e.g. :class:`~overture.errors.EngineBusy`)."""
    on_assign({0: backend})
    return WholeLog(on_revoke)
