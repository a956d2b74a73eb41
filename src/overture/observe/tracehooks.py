"""Where the clients, the HTTP API and the workers ask for spans, without importing
OpenTelemetry: a global SDK tracer provider can only have been set by a program that
imported ``opentelemetry.sdk.trace``, so until that module is loaded these hooks cost one
dictionary look-up and import nothing (Overture runs without OpenTelemetry installed).
Once it is, a send asks the API for the global provider and makes spans only when it is
the SDK's.

The API alone is not the sign: FastAPI imports ``opentelemetry.trace`` by itself (its own
request telemetry), and keying on it made the first send of every HTTP API process import
the SDK and this package's tracing module (about 20 ms and 1.6 MiB) with tracing off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events import Envelope
    from .tracing import SendSpans


_found: Any = None
_missing = False  # the SDK is not installed (a failed import is not cached by Python)


def _tracing() -> Any:
    """:mod:`overture.observe.tracing` when OpenTelemetry is in use, else None."""
    global _found, _missing
    if _found is not None:
        return _found
    if _missing or "opentelemetry.sdk.trace" not in sys.modules:
        return None
    try:
        from . import tracing
    except ImportError:  # (the SDK without the exporter, say): nothing to trace with
        _missing = True
        return None
    _found = tracing
    return tracing


def send_spans(envelopes: Sequence[Envelope]) -> tuple[list[Envelope], SendSpans] | None:
    """The events to send with their PRODUCER spans (each event without a
    ``traceparent`` given its span's), or None when no SDK tracer provider is set."""
    tracing = _tracing()
    return None if tracing is None else tracing.send_spans(envelopes)


def incoming(traceparent: str | None) -> Any:
    """A context manager making an incoming request's W3C ``traceparent`` (an HTTP
    header) the current trace context inside it (nothing without tracing)."""
    tracing = _tracing()
    if tracing is None or traceparent is None:
        return nullcontext()
    return _incoming(tracing, traceparent)


@contextmanager
def _incoming(tracing: Any, traceparent: str) -> Iterator[None]:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    context = tracing._remote(traceparent)
    if context is None or trace.get_current_span().get_span_context().is_valid:
        # (FastAPI's own telemetry already made the request's span, from the header)
        yield
        return

    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def task_span(envelope: Envelope, queue: str, task: str, attempt: int) -> Any:
    """A context manager giving ``(request, span)``: the worker's span of a task attempt
    (see :func:`overture.observe.tracing.task_span`), or the request untouched and None."""
    tracing = _tracing()
    if tracing is None:
        return nullcontext((envelope, None))
    return tracing.task_span(envelope, queue, task, attempt)


def record_error(error: BaseException) -> None:
    """Record ``error`` on the current span (a task attempt's, in a worker) and mark it
    failed; nothing without tracing."""
    tracing = _tracing()
    if tracing is not None:
        tracing.record_current_error(error)
