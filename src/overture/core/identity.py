"""The ids of instances: derived from the trigger event, so a re-delivered trigger finds
the instance it started (at most one instance per trigger event)."""

from __future__ import annotations

import hashlib

from ..events import Envelope


def instance_id_for(process: str, trigger: Envelope) -> str:
    """The id of the instance a trigger event starts.

    Derived only from what identifies the trigger in its record, its CloudEvents identity
    (``source`` + ``id``), so that a re-delivered trigger finds its instance instead of
    starting a second one, whatever the producer: a missing ``time`` is filled in with
    "now" on every decode, and a producer's retry may carry a new ``time``, so the time
    must not count (it did before: :func:`legacy_instance_id_for`).

    When the event id is a time-ordered UUID (version 7, what :class:`Envelope` generates)
    the instance id starts with its 12 leading hex digits (milliseconds): ids of instances
    started close together sort close together, so their rows share B-tree pages (random
    ids made each SQLite commit write ~12x more pages). Other ids get a digest prefix.
    """
    digest = hashlib.sha1(
        f"overture\x00{process}\x00{trigger.source}\x00{trigger.id}".encode()
    ).hexdigest()
    prefix = _time_prefix(trigger.id)
    return f"{digest[20:32] if prefix is None else prefix}{digest[:20]}"


def legacy_instance_id_for(process: str, trigger: Envelope) -> str:
    """The id the first releases derived (from the trigger's id *and* time).

    Instances started by them keep their ids; the engine looks for both derivations when
    a trigger arrives, so a re-delivered old trigger (which carries its time) still finds
    its instance.
    """
    digest = hashlib.sha1(f"overture\x00{process}\x00{trigger.id}".encode()).hexdigest()
    millis = int(trigger.time.timestamp() * 1000) & 0xFFFFFFFFFFF
    return f"{millis:011x}{digest[:21]}"


def trigger_instance_ids(process: str, trigger: Envelope) -> tuple[str, str]:
    """Every id an instance started by this trigger may have: (current, legacy)."""
    return instance_id_for(process, trigger), legacy_instance_id_for(process, trigger)


def _time_prefix(event_id: str) -> str | None:
    """The 12 leading hex digits (the milliseconds) of a canonical UUIDv7, else None."""
    if len(event_id) == 36 and event_id[14] == "7" and event_id[8] == "-":
        head = event_id[:8] + event_id[9:13]
        if all(c in "0123456789abcdef" for c in head):
            return head
    return None
