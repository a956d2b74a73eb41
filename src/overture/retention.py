"""How long finished work is kept: the retention durations users write (``7d``, ``12h``,
``0``, ``forever``) and their meaning as ``timedelta | None``.

``overture run --retention`` and anything else that takes a retention read it through
:func:`parse_retention`, so every front door accepts the same forms and names them in its
error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
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
# DELETED_KEPT of them, the oldest dropped first.
#
# Stored a page per pass (the ids one pass deleted, at most DELETED_PAGE of them), not an
# entry per id: remembering a pass's deletions is one keyed-state write, and forgetting
# them one delete. An entry per id (and a ring slot to find it by age) cost four B-tree
# writes at random positions per deleted instance, about 70 µs each on SQLite, twice what
# deleting the instance itself costs (docs/benchmarks.md). The price is paid by the rare
# reader: "was this id deleted?" scans the pages (at most DELETED_KEPT ids), which only a
# lookup of an id that is not stored asks.

DELETED = "overture.deleted.pages"
"""Keyed-state namespace: ``be32(owner)`` -> the engine's counter (:func:`counter`);
``be32(owner) + be64(page number)`` -> :func:`deleted_page` (one pass's ids)."""
DELETED_KEPT = 100_000
"""Deleted ids one engine remembers (the newest ones): about 4 MB of pages."""
DELETED_PAGE = 1_000
"""Most ids on one page (about 40 KB): a Kafka changelog record stays far below the
broker's default 1 MB message limit."""

_OWNER = 4  # bytes of the owner prefix of a key


def counter(head: int, tail: int, held: int) -> bytes:
    """An engine's page counter: the next page number to write, the oldest page held and
    the number of ids the held pages hold."""
    return b"".join(n.to_bytes(8, "big") for n in (head, tail, held))


def read_counter(value: bytes) -> tuple[int, int, int]:
    """(head, tail, held) back from :func:`counter`."""
    head, tail, held = (int.from_bytes(value[i : i + 8], "big") for i in (0, 8, 16))
    return head, tail, held


def deleted_page(at: float, retention: float, ids: Sequence[str]) -> bytes:
    """A page: the ids deleted by one pass at ``at`` (engine clock) under ``retention``
    (seconds)."""
    return json.dumps([at, retention, list(ids)]).encode()


def read_page(value: bytes) -> tuple[float, float, list[str]]:
    """(deleted at, retention in seconds, ids) back from :func:`deleted_page`."""
    at, retention, ids = json.loads(value)
    return float(at), float(retention), ids


def find_deleted(
    entries: Iterable[tuple[bytes, bytes]], instance_id: str
) -> tuple[float, timedelta] | None:
    """When (engine clock) and under which retention ``instance_id`` was last deleted,
    from the namespace's entries (every engine's pages), or None if no page holds it."""
    needle = json.dumps(instance_id).encode()  # a cheap test before a page is decoded
    found: tuple[float, float] | None = None
    for key, value in entries:
        if len(key) == _OWNER or needle not in value:
            continue
        at, retention, ids = read_page(value)
        if instance_id in ids and (found is None or at > found[0]):
            found = (at, retention)
    return None if found is None else (found[0], timedelta(seconds=found[1]))


def deleted_message(instance_id: str, at: float, retention: timedelta) -> str:
    """``Client.instance``'s answer for an id retention deleted."""
    moment = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"instance {instance_id!r} not found (deleted after the retention of "
        f"{describe_retention(retention)}, at {moment})"
    )
