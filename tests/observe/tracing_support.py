"""The process-wide OpenTelemetry set-up the tracing tests share.

OpenTelemetry lets a process set its global tracer provider once, and the clients and
workers trace through the global one (they trace whenever one is set); so one SDK
provider serves every tracing test, made global for the test alone (``installed``: the
API's module global set and put back, since ``set_tracer_provider`` refuses a second
call and other tests must see no provider), its spans kept in memory while a test
records (``Recorder``) and its sampler switchable per test (``Switch``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


class Switch(Sampler):
    """A sampler whose decision is another sampler's, chosen by the test."""

    def __init__(self) -> None:
        self.inner: Sampler = ALWAYS_ON
        self.asked: list[str] = []
        """The names of the spans it was asked about (the SDK was called for them)."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.asked.append(name)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"Switch({self.inner.get_description()})"


class Recorder(SpanProcessor):
    """Forwards ended spans to the in-memory exporter while ``on`` is set."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.on = False
        self.started = 0
        self.ended = 0
        self._inner = SimpleSpanProcessor(exporter)

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        if self.on:
            self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.ended += 1
            self._inner.on_end(span)


EXPORTER = InMemorySpanExporter()
RECORDER = Recorder(EXPORTER)
SAMPLER = Switch()
_provider: TracerProvider | None = None


def provider() -> TracerProvider:
    """The tests' SDK provider (made the first time)."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(sampler=SAMPLER)
        _provider.add_span_processor(RECORDER)
    return _provider


@contextmanager
def installed() -> Iterator[TracerProvider]:
    """The tests' provider as the global one inside the block, none after it."""
    chosen = provider()
    trace._TRACER_PROVIDER = chosen  # type: ignore[attr-defined]
    try:
        yield chosen
    finally:
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
