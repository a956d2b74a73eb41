"""W3C Trace Context ``traceparent`` values: checked where events enter, continued where a
process emits one. Pure string work, no tracing library (none is needed to carry a trace).

A ``traceparent`` is ``version-traceid-parentid-flags`` in lowercase hex
(``00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01``): a 2-digit version other
than ``ff``, a 32-digit trace id and a 16-digit parent (span) id that are not all zeros,
and 2 digits of flags. Version ``00`` is exactly that; a later version may append
``-``-separated fields, which a reader of version ``00`` ignores (the spec's rule for
forward compatibility), and a continued trace is written as version ``00``.
"""

from __future__ import annotations

import hashlib
import re

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def traceparent_problem(value: object) -> str | None:
    """Why ``value`` is not a valid W3C ``traceparent``, or None if it is."""
    if not isinstance(value, str):
        return f"traceparent must be a string, not {type(value).__name__}"
    match = _TRACEPARENT.match(value)
    if match is None:
        return (
            f"traceparent {value!r} is not W3C trace context (version-traceid-parentid-flags "
            "in lowercase hex: 2-32-16-2 digits)"
        )
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff":
        return f"traceparent {value!r} has the invalid version ff"
    if version == "00" and rest is not None:
        return f"traceparent {value!r} has fields after the flags, which version 00 has not"
    if trace_id == _ZERO_TRACE:
        return f"traceparent {value!r} has an all-zero trace id"
    if parent_id == _ZERO_SPAN:
        return f"traceparent {value!r} has an all-zero parent id"
    return None


def continue_trace(parent: str | None, seed: str) -> str | None:
    """The ``traceparent`` of an event caused by one carrying ``parent``: the same trace id
    and flags, and a new parent id derived from ``seed`` alone (deterministic, so a replay
    that emits again writes the identical value).

    Returns None when ``parent`` is None or invalid: there is no trace to continue.
    """
    if parent is None or traceparent_problem(parent) is not None:
        return None
    trace_id, flags = parent[3:35], parent[53:55]
    span = hashlib.sha256(f"overture-span\x00{seed}".encode()).hexdigest()[:16]
    if span == _ZERO_SPAN:  # 2**-64: not a valid id, and not worth a second hash
        span = "0" * 15 + "1"
    return f"00-{trace_id}-{span}-{flags}"
