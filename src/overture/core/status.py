"""The statuses of a process instance, defined once.

A :class:`Status` is a ``StrEnum``: its members *are* the strings stored in SQLite files,
Kafka changelog records and ``Instance.status`` (``Status.COMPLETED == "completed"``), so
stored values and comparisons with plain strings stay as they were. It lives in ``core``
because the state machine sets it; :mod:`overture.protocol` re-exports it for the other
layers (and for tools in other languages, the values are the wire names).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a process instance is in its life."""

    RUNNING = "running"
    """Its code runs, or a step it started has not finished."""
    WAITING = "waiting"
    """It waits only for events, timers or child instances (no step is running)."""
    COMPLETED = "completed"
    """Its code returned; the result is kept (final)."""
    FAILED = "failed"
    """Its code raised (after its compensations ran); the error is kept (final)."""
    CANCELLED = "cancelled"
    """Cancelled by a request, after its compensations ran (final)."""
    STUCK = "stuck"
    """Parked: a replay diverged from the journal (or its version is not registered). Its
    waits, timers and work are kept, so fixed code resumes it."""


FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
"""The statuses an instance never leaves."""
