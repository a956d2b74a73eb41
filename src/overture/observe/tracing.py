"""OpenTelemetry traces of what the engine, the clients and the workers do.

:class:`TracingObserver` is the engine's observer (``Engine(..., observer=...)``, combined
with metrics by :func:`~overture.runtime.observer.combine`). It makes, per the
OpenTelemetry messaging semantic conventions:

- a CONSUMER span ``process <type>`` for every event the engine routes, whose parent is
  the event's ``traceparent`` (a root span when it has none);
- an INTERNAL span ``run <process>`` per *segment* of an instance: from the input that
  makes it run (trigger, event, timer, task result) until it blocks again or finishes.
  A waiting instance holds no span open: the segment that resumes it is a child of the
  input that resumed it, linked to the instance's trigger and to its previous segment;
- an INTERNAL span per step attempt (``step <name>``) and handler attempt
  (``handler <name>``), current while the function runs (user spans nest under it),
  with the error status and the exception on failure;
- a PRODUCER span ``send <type>`` per emitted event and ``send <queue>`` per task
  attempt's request, whose span id *is* the parent id in the event's ``traceparent``
  (derived deterministically from ``instance_id:seq`` by the core, see
  :mod:`overture.tracecontext`): :class:`SeededIdGenerator` hands the SDK that id.

Clients and workers trace through :func:`send_spans` and :func:`task_span` when a global
SDK tracer provider is set (``overture run`` sets one from the ``OTEL_*`` variables,
:func:`configure`). Only this module imports OpenTelemetry; nothing imports it unless
tracing is asked for.
"""

from __future__ import annotations

import contextvars
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    ParentBasedTraceIdRatio,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from .. import protocol
from ..errors import ConfigError
from ..events import Envelope
from ..protocol import FINAL
from ..protocol import Status as InstanceStatus
from ..runtime.observer import Observer
from ..tracecontext import traceparent_problem

TRACER_NAME = "overture"
MAX_ATTRIBUTE = 256
"""Longest string attribute value written (longer ones are cut: bounded attributes)."""
REMEMBERED_SEGMENTS = 10_000
"""Instances whose last segment is remembered, to link the next one to it."""

_BOOKKEEPING = frozenset({protocol.WAIT_SUBSCRIBE, protocol.WAIT_UNSUBSCRIBE})
"""Control events that only move a subscription between partitions (no instance runs for
them): no span, they are not part of any business flow."""

_next_span_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "overture_next_span_id", default=None
)
_next_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "overture_next_trace_id", default=None
)


class SeededIdGenerator(IdGenerator):
    """The SDK's id generator, giving the next span the id the observer set (the parent id
    the core wrote in an emitted event's ``traceparent``), and the next root the trace id
    the observer already asked the sampler about; otherwise ``fallback``'s."""

    def __init__(self, fallback: IdGenerator | None = None) -> None:
        self.fallback = fallback or RandomIdGenerator()

    def generate_span_id(self) -> int:
        seeded = _next_span_id.get()
        if seeded is not None:
            _next_span_id.set(None)  # one span only, even if the SDK asked twice
            return seeded
        return self.fallback.generate_span_id()

    def generate_trace_id(self) -> int:
        seeded = _next_trace_id.get()
        if seeded is not None:
            _next_trace_id.set(None)
            return seeded
        return self.fallback.generate_trace_id()


def install_ids(provider: TracerProvider) -> None:
    """Make ``provider``'s tracers (those it makes from now on) take seeded span ids."""
    if not isinstance(provider.id_generator, SeededIdGenerator):
        provider.id_generator = SeededIdGenerator(provider.id_generator)  # type: ignore[assignment]


def sdk_provider(provider: Any = None) -> TracerProvider:
    """``provider``, else the global one; an SDK ``TracerProvider`` (its id generator is
    needed), with the seeded id generator installed."""
    chosen = trace.get_tracer_provider() if provider is None else provider
    if not isinstance(chosen, TracerProvider):
        raise ConfigError(
            "tracing needs an OpenTelemetry SDK TracerProvider: pass one as "
            "TracingObserver(tracer_provider=...) or set it with "
            f"opentelemetry.trace.set_tracer_provider() first (found {type(chosen).__name__})"
        )
    install_ids(chosen)
    return chosen


def parse(traceparent: str | None) -> SpanContext | None:
    """The remote span context of a W3C ``traceparent`` (None if absent or invalid)."""
    if traceparent is None or traceparent_problem(traceparent) is not None:
        return None
    return SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16) & TraceFlags.SAMPLED),
    )


def format_traceparent(context: SpanContext) -> str:
    """A span context as a W3C ``traceparent`` (version 00)."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 1:02x}"


def _remote(traceparent: str | None) -> otel_context.Context | None:
    parent = parse(traceparent)
    return None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))


def _unsampled(
    context: otel_context.Context | None,
) -> tuple[Span, otel_context.Context] | None:
    """The parent span and its context when the parent is valid and not sampled: under
    parent-based sampling (the SDK's default and ``parentbased_*``) its children are not
    sampled either, so the parent's non-recording span stands for each of them and the
    SDK is not called at all (a 1% sampling ratio then costs close to nothing)."""
    if context is None:
        return None
    span = trace.get_current_span(context)
    span_context = span.get_span_context()
    if span_context.is_valid and not span_context.trace_flags.sampled:
        return span, context
    return None


def _dropped(span: Span) -> bool:
    """Whether ``span`` (one we made or hold) is valid, not sampled and not recording
    (a sampler's RECORD_ONLY span records: it is ended as any other)."""
    span_context = span.get_span_context()
    return (
        span_context.is_valid and not span_context.trace_flags.sampled and not span.is_recording()
    )


_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def _root_bound(tracer: Any) -> int | None:
    """The bound below which a new root's trace id (its low 64 bits) is sampled, when
    ``tracer`` (an SDK tracer drawing ids from a :class:`SeededIdGenerator`) decides roots
    by the trace id alone: ``TraceIdRatioBased``, ``ParentBased`` over one (what
    ``OTEL_TRACES_SAMPLER=traceidratio`` and ``parentbased_traceidratio`` make) or over
    ``ALWAYS_OFF``. None for any other sampler (a subclass too: it may decide otherwise;
    one asked twice could decide twice, or count twice), which the SDK then asks.
    ``ParentBased`` keeps its root sampler in ``_root``, read defensively: not public."""
    if not isinstance(getattr(tracer, "id_generator", None), SeededIdGenerator):
        return None
    sampler = getattr(tracer, "sampler", None)
    parent_based = type(sampler) in (ParentBased, ParentBasedTraceIdRatio)
    root = getattr(sampler, "_root", None) if parent_based else sampler
    if type(root) is TraceIdRatioBased:
        return root.bound
    if root is ALWAYS_OFF:
        return 0
    return None


def _cut(value: str) -> str:
    return value if len(value) <= MAX_ATTRIBUTE else value[:MAX_ATTRIBUTE]


def _event_attributes(envelope: Envelope) -> dict[str, Any]:
    return {
        "messaging.message.id": _cut(envelope.id),
        "cloudevents.event_id": _cut(envelope.id),
        "cloudevents.event_type": _cut(envelope.type),
        "cloudevents.event_source": _cut(envelope.source),
    }


def _fail(span: Span, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, _cut(f"{type(error).__name__}: {error}")))
    else:
        span.set_status(Status(StatusCode.ERROR))


@dataclass(slots=True)
class _Segment:
    span: Span
    context: otel_context.Context
    trigger: str | None
    cause: Span | None  # the consume span that opened it (None: a timer, a step outcome)
    # its span is not its own to record or end: a dropped one (_dropped), or the unsampled
    # parent's that stands for it; told once
    dropped: bool = False
    attempts: _Dropped | None = None  # (dropped: what its attempts share, made once)


class _Attempt:
    """A step or handler attempt's span (the runtime's ``AttemptTrace``)."""

    __slots__ = ("context", "span")

    def __init__(self, span: Span, context: otel_context.Context | None = None) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span) if context is None else context

    def enter(self) -> None:
        # in the attempt's own context copy (discarded with it): never detached
        otel_context.attach(self.context)

    def end(self, ok: bool, error: BaseException | None) -> None:
        span = self.span
        if not ok and span.is_recording():
            _fail(span, error if isinstance(error, BaseException) else None)
        span.end()


class _Dropped(_Attempt):
    """The attempts of a trace that is not sampled: their parent's non-recording span
    stands for each of them (made current, so user spans inside join the dropped trace
    too), and ending one does nothing. One is shared by a segment's attempts."""

    __slots__ = ()

    def end(self, ok: bool, error: BaseException | None) -> None:
        pass


class TracingObserver(Observer):
    """The engine's spans (see the module docstring).

    Args:
        tracer_provider: an SDK ``TracerProvider`` (default: the global one, which must
            be an SDK provider). Its id generator is wrapped by :class:`SeededIdGenerator`.
        messaging_system: the ``messaging.system`` attribute (``"kafka"`` on Kafka).
        consumer_group: the ``messaging.consumer.group.name`` of the consume spans.

    Raises:
        ConfigError: the provider is not an SDK ``TracerProvider``.
    """

    traces = True

    def __init__(
        self,
        tracer_provider: Any = None,
        *,
        messaging_system: str = "overture",
        consumer_group: str | None = None,
    ) -> None:
        self.provider = sdk_provider(tracer_provider)
        self._tracer = self.provider.get_tracer(TRACER_NAME)
        self._bound = _root_bound(self._tracer)  # (see _new_root)
        # (the SDK's own test, where it has one: a disabled tracer makes no span at all)
        self._enabled: Callable[[], bool] = getattr(self._tracer, "_is_enabled", lambda: True)
        self._system = messaging_system
        self._group = consumer_group
        self._consume: tuple[Span, otel_context.Context] | None = None
        self._consume_dropped = False  # (its span is not ours to end: _dropped)
        self._segments: dict[str, _Segment] = {}
        self._last: OrderedDict[str, SpanContext] = OrderedDict()

    def __repr__(self) -> str:
        return "TracingObserver()"

    # -- consuming ----------------------------------------------------------------------

    def record_routing(self, envelope: Envelope, partition: int, offset: int) -> None:
        if envelope.type in _BOOKKEEPING:
            self._consume = None
            return
        parent = _remote(envelope.traceparent)
        trace_id = self._new_root() if parent is None else None
        unsampled = _unsampled(parent) if trace_id is None else self._dropped_root(trace_id)
        if unsampled is not None:
            self._consume, self._consume_dropped = unsampled, True
            return
        token = _next_trace_id.set(trace_id)  # (a kept root: the id its decision was on)
        try:
            span = self._tracer.start_span(
                f"process {envelope.type}", context=parent, kind=SpanKind.CONSUMER
            )
        finally:
            _next_trace_id.reset(token)
        self._consume_dropped = _dropped(span)  # (a root the SDK's sampler dropped)
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": self._system,
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": _cut(envelope.type),
                    "messaging.destination.partition.id": str(partition),
                    **_event_attributes(envelope),
                }
            )
            if self._group is not None:
                span.set_attribute("messaging.consumer.group.name", _cut(self._group))
        self._consume = span, trace.set_span_in_context(span)

    def _new_root(self) -> int | None:
        """The trace id of a new root CONSUMER span when the observer decides its
        sampling itself (``_bound``: the sampler compares the trace id with a bound), so
        that a dropped root costs no SDK span (the cost of 1% sampling is mostly that
        call, for the 99% of events that start an unsampled trace); None when the SDK
        decides: another sampler, a span current (it is the parent), a disabled tracer."""
        if (
            self._bound is None
            or trace.get_current_span().get_span_context().is_valid
            or not self._enabled()
        ):
            return None
        return self.provider.id_generator.generate_trace_id()

    def _dropped_root(self, trace_id: int) -> tuple[Span, otel_context.Context] | None:
        """The non-recording root span of trace ``trace_id`` if its sampler drops it (as
        that sampler would: ``_bound``), and its context; None if it is kept."""
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < cast(int, self._bound):
            return None
        span_id = self.provider.id_generator.generate_span_id()
        span = NonRecordingSpan(SpanContext(trace_id, span_id, False, _NOT_SAMPLED))
        return span, trace.set_span_in_context(span)

    def record_routed(self) -> None:
        if self._consume is not None:
            if not self._consume_dropped:
                self._consume[0].end()
            self._consume = None

    # -- segments -----------------------------------------------------------------------

    def segment_resumed(
        self, instance_id: str, process: str, version: int, trigger: str | None
    ) -> None:
        segment = self._segments.get(instance_id)
        consume = self._consume
        if segment is not None:
            if consume is None or segment.cause is consume[0]:
                return  # the same segment goes on (a step outcome, a timer while it runs)
            # a new input reached it while its segment was open: that one ends here
            self._end_segment(instance_id, segment, None)
        if consume is not None and self._consume_dropped:  # (1% sampling: no span)
            self._segments[instance_id] = _Segment(
                consume[0], consume[1], trigger, consume[0], dropped=True
            )
            return
        parent = consume[1] if consume is not None else _remote(trigger)
        links = []
        origin = parse(trigger)
        parent_span = trace.get_current_span(parent) if parent is not None else None
        if origin is not None and (
            parent_span is None or parent_span.get_span_context().span_id != origin.span_id
        ):
            links.append(Link(origin, {"overture.link": "trigger"}))
        previous = self._last.get(instance_id)
        if previous is not None:
            links.append(Link(previous, {"overture.link": "previous segment"}))
        unsampled = _unsampled(parent)
        if unsampled is not None:  # (the common case at a low sampling ratio: no span)
            self._segments[instance_id] = _Segment(
                unsampled[0],
                unsampled[1],
                trigger,
                None if consume is None else consume[0],
                dropped=True,
            )
            return
        # (the attributes given at the start: the SDK cleans them once, without the lock
        # and the second pass set_attributes costs; its parent is sampled, or it is a root)
        span = self._tracer.start_span(
            f"run {process}",
            context=parent,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={
                "overture.process.name": _cut(process),
                "overture.process.version": version,
                "overture.instance.id": _cut(instance_id),
            },
        )
        self._segments[instance_id] = _Segment(
            span,
            trace.set_span_in_context(span),
            trigger,
            None if consume is None else consume[0],
            dropped=_dropped(span),  # (a root the sampler did not sample)
        )

    def segment_flushed(self, instance_id: str, status: str, busy: bool) -> None:
        if busy:
            return
        segment = self._segments.get(instance_id)
        if segment is not None:
            self._end_segment(instance_id, segment, status)

    def instances_released(self, instance_ids: Sequence[str]) -> None:
        segments = self._segments
        for instance_id in instance_ids:
            segment = segments.get(instance_id)
            if segment is not None:
                if segment.span.is_recording():
                    segment.span.set_attribute("overture.segment.end", "engine stopped")
                self._end_segment(instance_id, segment, None)

    def _end_segment(self, instance_id: str, segment: _Segment, status: str | None) -> None:
        del self._segments[instance_id]
        span = segment.span
        if not segment.dropped:  # (a dropped one's span is its parent's, or not recorded)
            if span.is_recording():
                if status is not None:
                    span.set_attribute("overture.instance.status", str(status))
                if status in (InstanceStatus.FAILED, InstanceStatus.STUCK):
                    span.set_status(Status(StatusCode.ERROR, f"instance {status}"))
            span.end()
        last = self._last
        if status in FINAL:
            last.pop(instance_id, None)
            return
        last[instance_id] = span.get_span_context()
        last.move_to_end(instance_id)
        if len(last) > REMEMBERED_SEGMENTS:
            last.popitem(last=False)

    # -- producing ----------------------------------------------------------------------

    def emitted(self, instance_id: str, envelope: Envelope) -> None:
        span = self._produce(instance_id, envelope.type, envelope.traceparent)
        if span is None:
            return
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": self._system,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": _cut(envelope.type),
                    "overture.instance.id": _cut(instance_id),
                    **_event_attributes(envelope),
                }
            )
        span.end()

    def task_requested(self, instance_id: str, queue: str, envelope: Envelope) -> None:
        span = self._produce(instance_id, queue, envelope.traceparent)
        if span is None:
            return
        if span.is_recording():
            data = envelope.data if isinstance(envelope.data, dict) else {}
            span.set_attributes(
                {
                    "messaging.system": self._system,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": _cut(queue),
                    "messaging.message.id": _cut(envelope.id),
                    "overture.task.name": _cut(str(data.get("task", ""))),
                    "overture.attempt": int(data.get("attempt", 0)),
                    "overture.instance.id": _cut(instance_id),
                }
            )
        span.end()

    def _produce(self, instance_id: str, destination: str, traceparent: str | None) -> Span | None:
        """A PRODUCER span whose id is the parent id of ``traceparent`` (the message's),
        in the segment that sent it; None when no parent in the message's trace is known
        (an explicit traceparent of another trace: the message carries it untouched)."""
        segment = self._segments.get(instance_id)
        target = parse(traceparent)
        links: list[Link] = []
        if target is None:  # an untraced instance: a span of its segment's trace
            parent = None if segment is None else segment.context
            unsampled = _unsampled(parent)
            if unsampled is not None:
                return unsampled[0]
            return self._tracer.start_span(
                f"send {destination}", context=parent, kind=SpanKind.PRODUCER
            )
        parent = self._parent_in(instance_id, segment, target.trace_id)
        if parent is None:
            return None
        if segment is not None and parent is not segment.context:
            links.append(Link(segment.span.get_span_context()))
        if not target.trace_flags.sampled:
            return None  # its trace is not sampled: no span to make (its flags travel on)
        token = _next_span_id.set(target.span_id)
        try:
            return self._tracer.start_span(
                f"send {destination}", context=parent, kind=SpanKind.PRODUCER, links=links
            )
        finally:
            _next_span_id.reset(token)

    def _parent_in(
        self, instance_id: str, segment: _Segment | None, trace_id: int
    ) -> otel_context.Context | None:
        """The parent of a message in trace ``trace_id`` (the one its traceparent names):
        the open segment when it is of that trace; else the instance's last segment (a
        task attempt published at the end of a backoff, with no segment open); else the
        trigger's context (a segment resumed by an input of another trace: the message
        continues its trigger's trace, linked to the segment); None if none is."""
        if segment is not None and segment.span.get_span_context().trace_id == trace_id:
            return segment.context
        last = self._last.get(instance_id)
        if last is not None and last.trace_id == trace_id:
            return trace.set_span_in_context(NonRecordingSpan(last))
        origin = None if segment is None else parse(segment.trigger)
        if origin is not None and origin.trace_id == trace_id:
            return trace.set_span_in_context(NonRecordingSpan(origin))
        return None

    # -- attempts -----------------------------------------------------------------------

    def attempt_trace(
        self,
        kind: str,
        name: str,
        attempt: int,
        instance_id: str | None,
        trace_parent: str | None,
    ) -> _Attempt:
        if instance_id is not None:
            segment = self._segments.get(instance_id)
            if segment is None:
                parent = None
            elif segment.dropped:  # (1% sampling: the common case, no span)
                attempts = segment.attempts
                if attempts is None:
                    attempts = segment.attempts = _Dropped(segment.span, segment.context)
                return attempts
            else:
                parent = segment.context
        elif self._consume is not None:
            parent = self._consume[1]
        else:
            parent = _remote(trace_parent)
        unsampled = _unsampled(parent)
        if unsampled is not None:
            return _Dropped(*unsampled)
        attributes: dict[str, Any] = {
            f"overture.{kind}.name": _cut(name),
            "overture.attempt": attempt,
        }
        if instance_id is not None:
            attributes["overture.instance.id"] = _cut(instance_id)
        span = self._tracer.start_span(
            f"{kind} {name}", context=parent, kind=SpanKind.INTERNAL, attributes=attributes
        )
        return _Attempt(span)


# -- clients and workers ---------------------------------------------------------------


_global: tuple[TracerProvider, trace.Tracer] | None = None


def _global_tracer() -> trace.Tracer | None:
    """The tracer of the global SDK provider (None: no SDK provider is set)."""
    global _global
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return None  # no SDK provider set: clients do not trace
    cached = _global
    if cached is not None and cached[0] is provider:
        return cached[1]
    install_ids(provider)
    tracer = provider.get_tracer(TRACER_NAME)
    _global = provider, tracer
    return tracer


class SendSpans:
    """The PRODUCER spans of one send of events (see :func:`send_spans`)."""

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def end(self, error: BaseException | None = None) -> None:
        for span in self.spans:
            if error is not None and span.is_recording():
                _fail(span, error)
            span.end()


def send_spans(
    envelopes: Sequence[Envelope],
    *,
    system: str = "overture",
    parent: str | None = None,
) -> tuple[list[Envelope], SendSpans] | None:
    """PRODUCER spans ``send <type>`` for events about to be appended, under the current
    span (or ``parent``, an incoming ``traceparent``), and the events, each without a
    ``traceparent`` given its span's. None when no SDK tracer provider is set."""
    tracer = _global_tracer()
    if tracer is None:
        return None
    context = _remote(parent)
    out: list[Envelope] = []
    spans: list[Span] = []
    for envelope in envelopes:
        own = _remote(envelope.traceparent)
        span = tracer.start_span(
            f"send {envelope.type}",
            context=own if own is not None else context,
            kind=SpanKind.PRODUCER,
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": system,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": _cut(envelope.type),
                    **_event_attributes(envelope),
                }
            )
        if envelope.traceparent is None:
            envelope = replace(envelope, traceparent=format_traceparent(span.get_span_context()))
        out.append(envelope)
        spans.append(span)
    return out, SendSpans(spans)


@contextmanager
def task_span(
    envelope: Envelope, queue: str, task: str, attempt: int, *, system: str = "overture"
) -> Iterator[tuple[Envelope, Span | None]]:
    """A worker's CONSUMER span ``process <queue>`` for a task attempt, current inside the
    block, and the request as the result must answer it (its ``traceparent`` the span's,
    so the result continues the trace). No span when no SDK tracer provider is set."""
    tracer = _global_tracer()
    if tracer is None:
        yield envelope, None
        return
    span = tracer.start_span(
        f"process {queue}", context=_remote(envelope.traceparent), kind=SpanKind.CONSUMER
    )
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.system": system,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": _cut(queue),
                "messaging.message.id": _cut(envelope.id),
                "overture.task.name": _cut(task),
                "overture.attempt": attempt,
            }
        )
    continued = envelope
    if envelope.traceparent is not None:
        continued = replace(envelope, traceparent=format_traceparent(span.get_span_context()))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield continued, span
    finally:
        otel_context.detach(token)
        span.end()


def record_current_error(error: BaseException) -> None:
    """Record ``error`` on the current span, and its error status (a worker's attempt)."""
    span = trace.get_current_span()
    if span.is_recording():
        _fail(span, error)


# -- the SDK set up from OTEL_* variables (the commands) --------------------------------

_EXPORTER_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def wanted(environ: Any = None) -> bool:
    """Whether the environment asks for traces: an exporter or an OTLP endpoint is set,
    ``OTEL_TRACES_EXPORTER`` is not ``none``, and ``OTEL_SDK_DISABLED`` is not true."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in _EXPORTER_VARIABLES)


QUEUE_SIZE = 16_384
"""Spans the batch processor holds before it drops (``OTEL_BSP_MAX_QUEUE_SIZE``, whose
SDK default of 2,048 dropped spans when a batch of 500 W1 instances, 2,500 spans, ended
at once while the export thread was encoding the last one)."""
EXPORT_BATCH = 2_048
"""Spans per export request (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``; the SDK's default 512)."""


def batch_processor(exporter: Any) -> Any:
    """A ``BatchSpanProcessor`` of ``exporter`` with Overture's queue and batch sizes,
    unless ``OTEL_BSP_MAX_QUEUE_SIZE`` / ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` say otherwise
    (the other ``OTEL_BSP_*`` variables are the SDK's to read)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    env = os.environ
    queue = None if env.get("OTEL_BSP_MAX_QUEUE_SIZE") else QUEUE_SIZE
    batch = None if env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else EXPORT_BATCH
    if queue is None and batch is not None:  # the batch may not exceed the queue
        batch = None
    return BatchSpanProcessor(exporter, max_queue_size=queue, max_export_batch_size=batch)


def configure(*, service_name: str | None = None) -> TracerProvider:
    """Set the global tracer provider from the ``OTEL_*`` variables, as the SDK reads
    them (resource and ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``/``_ARG``, the OTLP
    exporter's endpoint, headers and timeout), with a ``BatchSpanProcessor`` per exporter
    named in ``OTEL_TRACES_EXPORTER`` (:func:`batch_processor`; default ``otlp``: OTLP
    over HTTP/protobuf; ``console`` also). Call :func:`shutdown` before exiting, to flush.

    Raises:
        ConfigError: an exporter that is not ``otlp``, ``console`` or ``none``.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    env = os.environ
    attributes = {}
    if service_name is not None and not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = service_name
    # the sampler and resource come from the variables (TracerProvider's defaults)
    provider = TracerProvider(
        resource=Resource.create(attributes), id_generator=SeededIdGenerator()
    )
    names = [
        n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()
    ]
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(batch_processor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(batch_processor(ConsoleSpanExporter()))
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp (OTLP over "
                "HTTP/protobuf), console or none"
            )
    trace.set_tracer_provider(provider)
    return provider


def shutdown(provider: TracerProvider) -> None:
    """Flush the spans still batched and stop the exporters (at the command's exit)."""
    provider.force_flush()
    provider.shutdown()
