"""``--observe``: the observer a benchmark's engine runs with.

- ``off``: none (the no-op observer).
- ``metrics``: ``MetricsObserver`` (Prometheus counters and histograms), scraped once at
  the end (the figures are checked to be there).
- ``trace``: ``TracingObserver`` on an SDK provider sampling every trace (``ALWAYS_ON``).
- ``trace1``: the same sampling 1% of new traces (``parentbased_traceidratio`` 0.01, as
  ``OTEL_TRACES_SAMPLER`` sets it); the load's events carry no traceparent (the producer
  does not trace), so each consume span is a root and 1 in 100 traces is recorded.

Spans go as ``overture run`` sends them: a ``BatchSpanProcessor`` (Overture's queue and
batch sizes, ``tracing.batch_processor``) into the OTLP/HTTP exporter (protobuf), to a
local receiver in a process of its own (:mod:`benchmarks.otlp_sink`), so the engine's
process pays for making, batching, encoding and sending the spans, and the receiver's
decoding is not counted.
:meth:`Observing.close` flushes them and reports ``spans_exported`` (what the receiver
got: spans the batch processor dropped on a full queue would be missing there).
"""

from __future__ import annotations

from typing import Any

OBSERVE = ("off", "metrics", "trace", "trace1")


class Observing:
    """The observer of one measurement and what it needs (a receiver, a provider)."""

    def __init__(self, kind: str) -> None:
        from overture.runtime.observer import NO_OBSERVER

        self.kind = kind
        self.observer: Any = NO_OBSERVER
        self._provider: Any = None
        self._sink: Any = None
        if kind == "off":
            return
        if kind == "metrics":
            from overture.observe.metrics import MetricsObserver

            self.observer = MetricsObserver()
            return
        if kind not in ("trace", "trace1"):
            raise ValueError(f"unknown --observe {kind!r}; choose from {', '.join(OBSERVE)}")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

        from overture.observe.tracing import TracingObserver, batch_processor

        from .otlp_sink import Sink

        self._sink = Sink()
        sampler = ALWAYS_ON if kind == "trace" else ParentBased(TraceIdRatioBased(0.01))
        self._provider = TracerProvider(sampler=sampler)
        self._provider.add_span_processor(
            batch_processor(OTLPSpanExporter(endpoint=self._sink.endpoint))
        )
        self.observer = TracingObserver(self._provider)

    def close(self) -> dict[str, Any]:
        """Flush and stop; what was observed (``spans_exported``, ``metrics_bytes``)."""
        out: dict[str, Any] = {}
        if self.kind == "metrics":
            from overture.observe.metrics import exposition

            out["metrics_bytes"] = len(exposition(self.observer.registry))
        if self._provider is not None:
            self._provider.force_flush()
            self._provider.shutdown()
            out["spans_exported"] = self._sink.spans()
            self._sink.close()
        return out
