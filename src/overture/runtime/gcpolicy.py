"""The garbage collector's first threshold while engines run.

CPython starts a young-generation collection every 700 net allocations of container
objects, and every hundredth one is a *full* collection that walks every object in the
process. A busy engine allocates tens of objects per instance and keeps thousands of live
instances (its cache) in memory, so with the default those full walks took a third of the
engine's CPU time in W1 (docs/benchmarks.md) while finding almost no garbage: the engine
breaks its own reference cycles (``Machine.close``) and frees instances by reference
counting.

While at least one engine runs, the first threshold is raised (never lowered, and left
alone at 0, which turns automatic collection off) to the engine's ``gc_threshold``; the
setting from before the first engine started comes back when the last one stops (a
change made meanwhile is undone). Cyclic garbage is still collected, only in larger,
rarer rounds.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None


def raise_threshold(threshold: int | None) -> Callable[[], None]:
    """Raise the first GC threshold to ``threshold`` (None: leave it alone) until the
    returned function is called. Nested holders share one saved setting."""
    if threshold is None:
        return lambda: None
    global _holders, _saved
    with _lock:
        current = gc.get_threshold()
        if _holders == 0:
            _saved = current
        _holders += 1
        if 0 < current[0] < threshold:  # 0: automatic collection is off; keep it so
            gc.set_threshold(threshold, current[1], current[2])
    released = [False]

    def release() -> None:
        global _holders, _saved
        with _lock:
            if released[0]:
                return
            released[0] = True
            _holders -= 1
            if _holders == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None

    return release
