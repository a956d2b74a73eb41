"""Journal entries: the durable history of one process instance.

A journal is an ordered list of small JSON objects. Entries of kind ``start``, ``res`` and
``cancel`` are *inputs* (they drive the code on replay); ``cmd`` and ``end`` entries are
*outputs* the code produced and are checked against the code on replay; ``retry``
entries are notes for humans (the retry schedule itself lives in the store's work rows).

=========  ==================================================================================
kind       fields
=========  ==================================================================================
start      ``t`` time, ``ev`` trigger CloudEvent (structured JSON), ``fmt`` journal format,
           ``v`` process version
cmd        ``s`` sequence number, ``op`` (step | call | wait | sleep | emit | abandon), ``n``
           name (a call's: the task's), and per op:
           ``key``/``due`` (wait), ``due`` (sleep), ``ev`` event id (emit); an abandon's
           name is ``#<seq>`` of the operation it abandoned
res        ``t`` time, ``s`` sequence number, then ``ok`` value or ``err`` {type, message}
cancel     ``t`` time (an operator's cancellation: pending operations are abandoned and
           the registered compensations run)
retry      ``t`` time, ``s`` sequence number, ``a`` failed attempt, ``err``, ``due`` next try
end        ``t`` time, ``st`` completed | failed | cancelled, then ``ok`` result or ``err``
=========  ==================================================================================

``FORMAT`` is written into every ``start`` entry so later releases can read old journals.
"""

from __future__ import annotations

from typing import Any

from .status import Status

FORMAT = 1

Entry = dict[str, Any]

INPUT_KINDS = frozenset({"start", "res", "cancel"})


def describe(entry: Entry) -> str:
    """One human-readable line for ``overture show``."""
    kind = entry["k"]
    if kind == "start":
        return f"started by {entry['ev']['type']} ({entry['ev']['id']})"
    if kind == "cmd":
        op, name = entry["op"], entry["n"]
        if op == "wait":
            key = entry.get("key")
            return f"#{entry['s']} wait for {name} " + (
                "keyless" if key is None else f"key={key!r}"
            )
        if op == "sleep":
            return f"#{entry['s']} sleep"
        if op == "emit":
            return f"#{entry['s']} emit {name} ({entry.get('ev')})"
        return f"#{entry['s']} {op} {name}"
    if kind == "res":
        if "err" in entry:
            return f"#{entry['s']} failed: {entry['err']['type']}: {entry['err']['message']}"
        return f"#{entry['s']} -> {entry.get('ok')!r}"
    if kind == "cancel":
        return "cancel requested"
    if kind == "retry":
        err = entry["err"]
        return (
            f"#{entry['s']} attempt {entry['a']} failed ({err['type']}: {err['message']}); retrying"
        )
    if kind == "end":
        if "err" in entry:
            return f"{entry['st']}: {entry['err']['type']}: {entry['err']['message']}"
        if "ok" not in entry or entry["st"] == Status.CANCELLED:
            return str(entry["st"])
        return f"{entry['st']}: {entry['ok']!r}"
    return repr(entry)
