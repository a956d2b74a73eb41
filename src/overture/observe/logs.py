"""Structured logs: ``--log-format json`` writes one JSON object per line.

Each line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; inside a running step, handler or task function also ``instance_id`` and
``process`` (for a process step: the instance and its process's name), ``step`` and
``attempt`` (from :func:`overture.current_step`; the engine's own lines about a step,
written outside it, carry the same fields); when an OpenTelemetry
span is current, ``trace_id`` and ``span_id`` (32 and 16 hex digits); when the record
carries an exception, ``exception`` (its formatted traceback). Fields passed with
``extra=`` that are plain JSON values are kept as they are.

OpenTelemetry is only consulted if something else has already imported it: JSON logs
never import it themselves.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from ..runtime.executor import PROCESS_FIELD, current_step

# Attributes every LogRecord has: not copied as extra fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_PLAIN = (str, int, float, bool, type(None))


def _span_ids() -> tuple[str, str] | None:
    """The current OpenTelemetry span's trace and span ids in hex, if one is recording."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # nothing imported OpenTelemetry: no span can be current
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that makes each record one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        step = current_step()
        if step is not None:
            if step.instance_id is not None:
                entry["instance_id"] = step.instance_id
            if step.process is not None:
                entry["process"] = step.process
            entry["step"] = step.name
            entry["attempt"] = step.attempt
        named = getattr(record, PROCESS_FIELD, None)
        if isinstance(named, str) and "process" not in entry:  # an engine line's
            entry["process"] = named
        ids = _span_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in vars(record).items():
            if (
                key not in _STANDARD
                and key != PROCESS_FIELD
                and key not in entry
                and isinstance(value, _PLAIN)
            ):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON (an object's repr) must not
        # make a log line vanish.
        return json.dumps(entry, ensure_ascii=False, default=str)
