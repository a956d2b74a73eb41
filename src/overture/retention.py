"""How long finished work is kept: the retention durations users write (``7d``, ``12h``,
``0``, ``forever``) and their meaning as ``timedelta | None``.

``overture run --retention`` and anything else that takes a retention read it through
:func:`parse_retention`, so every front door accepts the same forms and names them in its
error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .errors import ConfigError

DEFAULT_RETENTION = timedelta(days=7)
"""What ``EngineOptions.retention`` and ``overture run`` keep finished instances for."""

FORMS = "a number with a unit s, m, h, d or w (e.g. 90s, 30m, 12h, 7d, 2w), 0, or forever"
"""The accepted forms, as error messages name them."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_retention(text: str, *, option: str = "--retention") -> timedelta | None:
    """``7d`` → 7 days; ``0`` → nothing kept after the finish; ``forever`` → ``None``.

    Raises:
        ConfigError: any other text (the message names ``option`` and the accepted forms).
    """
    value = text.strip().lower()
    if value == "forever":
        return None
    if value in ("0", "0s"):
        return timedelta(0)
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ConfigError(f"{option} {text!r} is not a retention: use {FORMS}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def describe_retention(retention: timedelta | None) -> str:
    """The short form back (``7d``, ``90s``, ``forever``), for messages."""
    if retention is None:
        return "forever"
    seconds = retention.total_seconds()
    for unit in ("d", "h", "m"):  # "7d", not "1w": days are what users write
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- deleted ids ---------------------------------------------------------------------------
#
# The ids of the instances retention deleted are remembered in keyed state, so that a
# client asking for one can say it was deleted rather than never existed. Bounded twice:
# an id is dropped by the first pass one more retention after its deletion, and each
# engine (one per partition on Kafka, one for the file on SQLite) keeps at most
# DELETED_KEPT of them (a FIFO ring, ``runtime/retention.py``, the oldest dropped first).

DELETED = "overture.deleted"
"""Keyed-state namespace: instance id (UTF-8) -> :func:`deleted_entry`."""
DELETED_RING = "overture.deleted.ring"
"""Keyed-state namespace of the ring: ``be32(owner)`` -> its head and tail (the next
slot number to write, the oldest one held: two ``be64``); ``be32(owner) + be32(slot
% DELETED_KEPT)`` -> ``"<deleted at> <id>"`` (UTF-8)."""
DELETED_KEPT = 100_000
"""Deleted ids one engine remembers (the newest ones): about 10 MB of SQLite rows, and
two changelog records each on Kafka."""


def deleted_entry(at: float, retention: float) -> bytes:
    """What is kept of a deleted instance: when (engine clock) and under which retention."""
    return f"{at!r} {retention!r}".encode()


def read_deleted(value: bytes) -> tuple[float, timedelta]:
    """(deleted at, retention) back from :func:`deleted_entry`."""
    at, retention = value.decode().split()
    return float(at), timedelta(seconds=float(retention))


def deleted_message(instance_id: str, value: bytes) -> str:
    """``Client.instance``'s answer for an id retention deleted."""
    at, retention = read_deleted(value)
    moment = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"instance {instance_id!r} not found (deleted after the retention of "
        f"{describe_retention(retention)}, at {moment})"
    )
