"""Roots of new traces under sampling: for the SDK's ratio samplers ``TracingObserver``
decides an event that carries no ``traceparent`` itself and makes no SDK span for the
roots it drops (the cost of 1% sampling), so the decision must be the one the SDK would
have taken: on the trace id the root gets, with a span current in the engine as the
parent; any other sampler is left to the SDK, asked once. Real engine, real SDK, its
in-memory exporter; no global provider is set, so the client's sends carry no
``traceparent`` and every consume span is a root."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.util.types import Attributes

import overture as ov
from overture.observe.tracing import TRACER_NAME, TracingObserver
from overture.testing import Harness, VirtualClock

# a ratio of 0.5 samples a trace id whose low 64 bits are below 2**63
KEPT = ((7 << 64) | 5, (8 << 64) | 6)
DROPPED = ((9 << 64) | (2**64 - 2), (10 << 64) | (2**63 + 1))


class Ids(IdGenerator):
    """The given trace ids in turn, then random ones."""

    def __init__(self, trace_ids: Sequence[int]) -> None:
        self.trace_ids = list(trace_ids)
        self.random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self.random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self.trace_ids.pop(0) if self.trace_ids else self.random.generate_trace_id()


Decide = Callable[
    [Context | None, int, str, SpanKind | None, Attributes, Sequence[Link] | None], SamplingResult
]


class Deciding(Sampler):
    """A sampler of a class the observer does not know (so the SDK asks it), whose
    decision is ``decide(parent_context, trace_id, name, kind, attributes, links)``."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide

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
        return self.decide(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "Deciding"


def traced(
    sampler: Sampler, trace_ids: Sequence[int]
) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler, id_generator=Ids(trace_ids))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def app(provider: TracerProvider, seen: dict[str, SpanContext]) -> ov.App:
    application = ov.App("roots")

    async def work(order: str) -> str:
        # a user span inside the step: in the instance's trace, recorded only with it
        with provider.get_tracer("user").start_as_current_span("user work") as span:
            seen[order] = span.get_span_context()
        return order

    @application.process(trigger="go", key=lambda e: e.data["k"])
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        return str(await ctx.step(work, event.data["k"], name="work"))

    return application


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBased(TraceIdRatioBased(0.5)),  # what parentbased_traceidratio makes
        TraceIdRatioBased(0.5),
        Deciding(ParentBased(TraceIdRatioBased(0.5)).should_sample),  # any other: asked
    ],
    ids=["parentbased-ratio", "ratio", "another-sampler"],
)
async def test_a_root_is_kept_or_dropped_by_the_sampler_on_its_own_trace_id(
    sampler: Sampler,
) -> None:
    provider, exporter = traced(sampler, [KEPT[0], DROPPED[0], KEPT[1], DROPPED[1]])
    seen: dict[str, SpanContext] = {}
    async with Harness(app(provider, seen), observer=TracingObserver(provider)) as h:
        for k in "abcd":  # one at a time: the roots draw the trace ids in this order
            h.client.send("go", {"k": k}, key=k)
            await h.idle()
        assert {i.status for i in h.client.instances()} == {"completed"}
    spans = exporter.get_finished_spans()
    by_trace: dict[int, set[str]] = {}
    for span in spans:
        assert span.context is not None
        by_trace.setdefault(span.context.trace_id, set()).add(span.name)
    # the kept roots' whole traces, with the trace ids the sampler was asked about
    assert by_trace == {t: {"process go", "run proc", "step work", "user work"} for t in KEPT}
    # a dropped root's instance ran in its (unrecorded) trace: the user's span joined it
    assert {k: (c.trace_id, c.trace_flags.sampled) for k, c in seen.items()} == {
        "a": (KEPT[0], True),
        "b": (DROPPED[0], False),
        "c": (KEPT[1], True),
        "d": (DROPPED[1], False),
    }


async def test_a_span_current_in_the_engine_is_the_parent_of_its_roots() -> None:
    # the outer span is sampled; the event's own trace id would be dropped by the ratio
    provider, exporter = traced(ParentBased(TraceIdRatioBased(0.5)), [KEPT[0], DROPPED[0]])
    seen: dict[str, SpanContext] = {}
    with provider.get_tracer("test").start_as_current_span("outer") as outer:
        async with Harness(app(provider, seen), observer=TracingObserver(provider)) as h:
            h.client.send("go", {"k": "a"}, key="a")
            await h.idle()
    consumed = [s for s in exporter.get_finished_spans() if s.name == "process go"]
    assert len(consumed) == 1
    assert consumed[0].parent is not None
    assert consumed[0].parent.span_id == outer.get_span_context().span_id
    assert seen["a"].trace_id == KEPT[0] and seen["a"].trace_flags.sampled


def counting(roots: list[int]) -> Deciding:
    """Keeps one consumed root in two by the order it is asked (not by the trace id:
    asked twice about a root, it would decide twice), counting them in ``roots``."""
    ratio = ParentBased(TraceIdRatioBased(0.5))

    def decide(
        parent: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None,
        attributes: Attributes,
        links: Sequence[Link] | None,
    ) -> SamplingResult:
        chosen = ratio if name != "process go" else ALWAYS_ON if len(roots) % 2 == 0 else ALWAYS_OFF
        if name == "process go":
            roots.append(trace_id)
        return chosen.should_sample(parent, trace_id, name, kind, attributes, links)

    return Deciding(decide)


async def test_a_sampler_that_is_not_a_ratio_is_asked_once_per_root() -> None:
    roots: list[int] = []
    provider, exporter = traced(counting(roots), [])
    async with Harness(app(provider, {}), observer=TracingObserver(provider)) as h:
        for k in "abcdef":
            h.client.send("go", {"k": k}, key=k)
            await h.idle()
    assert len(roots) == 6
    assert len([s for s in exporter.get_finished_spans() if s.name == "process go"]) == 3


class Open(SpanProcessor):
    """The spans started and not ended yet."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        del self.open[span.context.span_id]


async def test_every_recording_span_ends_though_none_is_sampled() -> None:
    # records every span and samples none (RECORD_ONLY): each is started and ended,
    # and never exported
    provider, exporter = traced(Deciding(lambda *_: SamplingResult(Decision.RECORD_ONLY)), [])
    spans = Open()
    provider.add_span_processor(spans)
    clock = VirtualClock()
    async with Harness(sleepy(), clock=clock, observer=TracingObserver(provider)) as h:
        for k in "abc":
            h.client.send("go", {"k": k}, key=k)
        await h.idle()
        clock.advance(60)  # the timer resumes each in a segment of its own
        await h.idle()
        assert {i.status for i in h.client.instances()} == {"completed"}
        assert spans.open == {}
    assert exporter.get_finished_spans() == ()


def sleepy() -> ov.App:
    application = ov.App("sleepy")

    async def work(k: str) -> str:
        return k

    @application.process(trigger="go", key=lambda e: e.data["k"])
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        await ctx.sleep(timedelta(seconds=30))
        return str(await ctx.step(work, event.data["k"], name="work"))

    return application


async def test_a_tracer_made_before_the_observer_keeps_trace_ids_apart() -> None:
    # the provider's "overture" tracer exists before the observer installs its id
    # generator (the SDK keeps one tracer per scope): the observer does not seed it
    provider, _ = traced(ParentBased(TraceIdRatioBased(0.5)), [KEPT[0], DROPPED[0], KEPT[1]])
    provider.get_tracer(TRACER_NAME)
    seen: dict[str, SpanContext] = {}
    async with Harness(app(provider, seen), observer=TracingObserver(provider)) as h:
        for k in "abc":
            h.client.send("go", {"k": k}, key=k)
            await h.idle()
    # the SDK decided each root on the id it drew (no id drawn twice, none left over)
    assert {k: (c.trace_id, c.trace_flags.sampled) for k, c in seen.items()} == {
        "a": (KEPT[0], True),
        "b": (DROPPED[0], False),
        "c": (KEPT[1], True),
    }


class KeepsEveryRoot(ParentBased):
    """A ``ParentBased`` ratio sampler of its own kind: it keeps every consumed root."""

    def __init__(self) -> None:
        super().__init__(TraceIdRatioBased(0.5))

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
        if name == "process go":
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind)
        return super().should_sample(parent_context, trace_id, name, kind, attributes, links)


async def test_a_subclass_of_a_known_sampler_decides_for_itself() -> None:
    provider, exporter = traced(KeepsEveryRoot(), [KEPT[0], DROPPED[0], DROPPED[1]])
    async with Harness(app(provider, {}), observer=TracingObserver(provider)) as h:
        for k in "abc":
            h.client.send("go", {"k": k}, key=k)
            await h.idle()
    assert len([s for s in exporter.get_finished_spans() if s.name == "process go"]) == 3
