"""``--observe``: the observer a benchmark's engine runs with.

- ``off``: none (the no-op observer).
- ``metrics``: ``MetricsObserver`` (Prometheus counters and histograms, never scraped).
- ``trace``: ``TracingObserver`` on an SDK provider sampling every trace (``ALWAYS_ON``).
- ``trace1``: the same sampling 1% of new traces (``parentbased_traceidratio`` 0.01, as
  ``OTEL_TRACES_SAMPLER`` sets it); the load's events carry no traceparent (the producer
  does not trace), so each consume span is a root and 1 in 100 traces is recorded.

Spans go through a ``BatchSpanProcessor`` (the SDK's default queue and batch sizes, as
``overture run`` uses) into an exporter that drops them: the SDK's cost of making and
batching spans is measured, that of serializing and sending them is the exporter's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OBSERVE = ("off", "metrics", "trace", "trace1")


def observer(kind: str) -> Any:
    """The engine's observer for ``kind`` (one of :data:`OBSERVE`)."""
    from overture.runtime.observer import NO_OBSERVER

    if kind == "off":
        return NO_OBSERVER
    if kind == "metrics":
        from overture.observe.metrics import MetricsObserver

        return MetricsObserver()
    if kind not in ("trace", "trace1"):
        raise ValueError(f"unknown --observe {kind!r}; choose from {', '.join(OBSERVE)}")
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from overture.observe.tracing import TracingObserver

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = ALWAYS_ON if kind == "trace" else ParentBased(TraceIdRatioBased(0.01))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return TracingObserver(provider)
