"""OpenTelemetry traces of one business flow, on real engines (memory and SQLite) with the
real Python worker in-process and the SDK's in-memory exporter: client send → consume →
run segment → step attempts (one failing, retried) → task attempt on the worker → emit →
the process the emitted event starts → a wait fed later by another send. One trace,
parent/child structure, the messaging and CloudEvents attributes, links, no span held
open across the wait; replay makes no span twice; sampling is obeyed and carried."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

import overture as ov
from overture.backends import open_backend
from overture.observe.tracing import TracingObserver
from overture.testing import Harness, VirtualClock
from overture.worker import Worker

from .tracing_support import EXPORTER, RECORDER, SAMPLER

RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=1))


def flow_app(seen: dict[str, Any]) -> ov.App:
    app = ov.App("traced")
    calls: list[int] = []

    def flaky(order: str) -> str:  # a sync step: runs in the thread pool
        calls.append(1)
        seen["step_span"] = trace.get_current_span().get_span_context()
        if len(calls) == 1:
            raise RuntimeError("the first attempt fails")
        return order

    async def pack(order: str) -> str:  # an async step making a span of its own
        with trace.get_tracer("user").start_as_current_span("user work"):
            return f"packed {order}"

    @app.task("charge")
    def charge(args: dict[str, Any]) -> dict[str, Any]:
        seen["task_span"] = trace.get_current_span().get_span_context()
        return {"charged": args["order"]}

    @app.process(
        trigger="order.placed",
        key=lambda e: e.data["order"],
        waits=["payment.received"],
        emits=["order.accepted"],
    )
    async def order(ctx: ov.Context, event: ov.Event) -> str:
        await ctx.step(flaky, event.data["order"], retry=RETRY, name="flaky")
        await ctx.call("charge", {"order": event.data["order"]})
        ctx.emit("order.accepted", {"order": event.data["order"]})
        await ctx.wait_for("payment.received", key=event.data["order"])
        return "done"

    @app.process(trigger="order.accepted", key=lambda e: e.data["order"])
    async def ship(ctx: ov.Context, event: ov.Event) -> str:
        return str(await ctx.step(pack, event.data["order"], name="pack"))

    @app.on("order.accepted", name="notify")
    async def notify(event: ov.Event) -> None:
        return None

    return app


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://traced"
    return f"sqlite:///{tmp_path / 'traced.db'}"


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def one(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(finished, name)
    assert len(found) == 1, (name, [s.name for s in finished])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def sid(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def run_flow(h: Harness, clock: VirtualClock) -> None:
    async with Worker(h.app, h.backend, poll=0.05) as worker:
        with trace.get_tracer("test").start_as_current_span("checkout"):
            h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        clock.advance(1)  # the retry's backoff
        await h.idle()
        async with asyncio.timeout(20):
            await worker.wait_finished(1)
            while h.client.instance(_order_id(h)).status != "waiting":
                await h.idle()
                await asyncio.sleep(0.01)
    await h.idle()
    # days later, in the same business flow (the checkout's trace, another request)
    checkout = one(EXPORTER.get_finished_spans(), "checkout")
    assert checkout.context is not None
    parent = trace.set_span_in_context(trace.NonRecordingSpan(checkout.context))
    with trace.get_tracer("test").start_as_current_span("pay", context=parent):
        h.client.send("payment.received", {"order": "o1"}, key="o1")
    await h.idle()


def _order_id(h: Harness) -> str:
    return next(i.id for i in h.client.instances() if i.process == "order")


async def test_one_trace_follows_the_flow_across_every_hop(url: str, spans: object) -> None:
    seen: dict[str, Any] = {}
    clock = VirtualClock()
    app = flow_app(seen)
    async with Harness(app, url, clock=clock, observer=TracingObserver()) as h:
        await run_flow(h, clock)
        statuses = {i.process: i.status for i in h.client.instances()}
        assert statuses == {"order": "completed", "ship": "completed"}
        emitted = [e for e in h.client.events() if e.envelope.type == "order.accepted"]
    finished = EXPORTER.get_finished_spans()
    # every span, the test's own included, is in the one trace of the checkout
    assert len({s.context.trace_id for s in finished if s.context is not None}) == 1
    # nothing held open: every span the SDK started has ended
    assert RECORDER.started == RECORDER.ended

    checkout = one(finished, "checkout")
    send = one(finished, "send order.placed")
    assert send.kind is SpanKind.PRODUCER and parent_of(send) == sid(checkout)
    consumes = by_name(finished, "process order.placed")
    assert len(consumes) == 1
    consume = consumes[0]
    assert consume.kind is SpanKind.CONSUMER and parent_of(consume) == sid(send)
    attributes = dict(consume.attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "order.placed"
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["cloudevents.event_type"] == "order.placed"
    assert attributes["messaging.message.id"] == attributes["cloudevents.event_id"]

    segments = sorted(by_name(finished, "run order"), key=lambda s: s.start_time or 0)
    # trigger → the step's backoff; its timer → task call; task result → wait; payment → end
    assert len(segments) == 4
    first, retried, second, third = segments
    assert parent_of(first) == sid(consume)
    assert dict(first.attributes or {})["overture.instance.id"] == _id_of(segments)
    # blocked on the backoff's timer and its task call (still running), then on the wait
    assert dict(first.attributes or {})["overture.instance.status"] == "running"
    assert dict(retried.attributes or {})["overture.instance.status"] == "running"
    assert dict(second.attributes or {})["overture.instance.status"] == "waiting"
    assert dict(third.attributes or {})["overture.instance.status"] == "completed"
    # a segment ends when the instance blocks: none overlaps the next
    assert (first.end_time or 0) <= (retried.start_time or 0)
    assert (retried.end_time or 0) <= (second.start_time or 0)
    assert (second.end_time or 0) <= (third.start_time or 0)
    # the timer's segment continues the trigger's context, linked to the one before
    assert parent_of(retried) == sid(send)
    assert {link.context.span_id for link in retried.links} == {sid(first)}

    attempts = sorted(by_name(finished, "step flaky"), key=lambda s: s.start_time or 0)
    assert [dict(a.attributes or {})["overture.attempt"] for a in attempts] == [1, 2]
    assert [parent_of(a) for a in attempts] == [sid(first), sid(retried)]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert [e.name for e in attempts[0].events] == ["exception"]
    assert attempts[1].status.status_code is not StatusCode.ERROR
    # the sync step ran with its attempt span current (in the thread pool)
    assert seen["step_span"].span_id == sid(attempts[1])

    # the task: the request's send span, the worker's span, the result consumed
    request = one(finished, "send default")
    assert request.kind is SpanKind.PRODUCER and parent_of(request) == sid(retried)
    worked = one(finished, "process default")
    assert worked.kind is SpanKind.CONSUMER and parent_of(worked) == sid(request)
    assert seen["task_span"].span_id == sid(worked)
    result = one(finished, "process overture.task.completed")
    assert parent_of(result) == sid(worked)
    assert parent_of(second) == sid(result)
    # a resumed segment links to the trigger and to the previous segment
    linked = {link.context.span_id for link in second.links}
    assert sid(retried) in linked

    # the emit: its span id is the parent id in the emitted event's traceparent
    produced = one(finished, "send order.accepted")
    assert produced.kind is SpanKind.PRODUCER and parent_of(produced) == sid(second)
    assert len(emitted) == 1
    traceparent = emitted[0].envelope.traceparent
    assert traceparent is not None
    assert traceparent[36:52] == f"{sid(produced):016x}"
    # ... and what it starts or feeds is its child: the process and the handler
    accepted = one(finished, "process order.accepted")
    assert parent_of(accepted) == sid(produced)
    shipped = one(finished, "run ship")
    assert parent_of(shipped) == sid(accepted)
    handler = one(finished, "handler notify")
    assert parent_of(handler) == sid(accepted)
    pack = one(finished, "step pack")
    assert parent_of(pack) == sid(shipped)
    assert parent_of(one(finished, "user work")) == sid(pack)

    # the payment sent later resumes the instance in a segment of its own
    paid = one(finished, "process payment.received")
    assert parent_of(paid) == sid(one(finished, "send payment.received"))
    assert parent_of(third) == sid(paid)
    assert {link.context.span_id for link in third.links} >= {sid(second)}


def _id_of(segments: list[ReadableSpan]) -> str:
    return str(dict(segments[0].attributes or {})["overture.instance.id"])


def replay_app() -> ov.App:
    app = ov.App("replayed")

    async def work(n: int) -> int:
        return n + 1

    @app.process(trigger="go", key=lambda e: e.data["k"], waits=["more"], emits=["went"])
    async def proc(ctx: ov.Context, event: ov.Event) -> int:
        first = await ctx.step(work, 1, name="work")
        ctx.emit("went", {"k": event.data["k"], "n": first})
        await ctx.wait_for("more", key=event.data["k"])
        second = await ctx.step(work, first, name="work")
        ctx.emit("went", {"k": event.data["k"], "n": second})
        await ctx.sleep(timedelta(seconds=5))
        return second

    return app


TRIGGER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def replayed_flow(url: str, observer: TracingObserver | None) -> list[str | None]:
    """The flow with every input replayed from the journal (cache 0) and a restart
    (a new engine) between inputs; the emitted events' traceparents."""
    clock = VirtualClock()
    options: dict[str, Any] = {"cache_size": 0}
    if observer is not None:
        options["observer"] = observer
    async with Harness(replay_app(), url, clock=clock, **options) as h:
        h.client.send("go", {"k": "a"}, key="a", id="go-1", traceparent=TRIGGER)
        await h.idle()
        await h.restart()
        h.client.send("more", {"k": "a"}, key="a", id="more-1", traceparent=TRIGGER)
        await h.idle()
        await h.restart()
        clock.advance(5)
        await h.idle()
        assert [i.status for i in h.client.instances()] == ["completed"]
        return [e.envelope.traceparent for e in h.client.events() if e.envelope.type == "went"]


async def test_replay_makes_no_span_twice_and_emits_the_same_traceparents(
    tmp_path: Path, spans: object
) -> None:
    traced = await replayed_flow(f"sqlite:///{tmp_path / 'on.db'}", TracingObserver())
    finished = EXPORTER.get_finished_spans()
    assert RECORDER.started == RECORDER.ended
    # two step attempts, two emits, one of each consume: replays of the journal made none
    assert len(by_name(finished, "step work")) == 2
    assert len(by_name(finished, "send went")) == 2
    assert len(by_name(finished, "process go")) == 1
    assert len(by_name(finished, "process more")) == 1
    assert len(by_name(finished, "run proc")) == 3  # go; more; the timer
    # the producer spans are the emitted events' parents
    produced = {f"{sid(s):016x}" for s in by_name(finished, "send went")}
    assert {t[36:52] for t in traced if t is not None} == produced
    # the timer's segment: a child of the trigger's context, linked to the previous one
    last = max(by_name(finished, "run proc"), key=lambda s: s.start_time or 0)
    assert parent_of(last) == int(TRIGGER[36:52], 16)

    untraced = await replayed_flow(f"sqlite:///{tmp_path / 'off.db'}", None)
    assert traced == untraced
    assert all(t is not None and t[3:35] == TRIGGER[3:35] for t in traced)


async def test_unsampled_work_records_nothing_and_carries_its_flags(spans: object) -> None:
    SAMPLER.inner = ParentBased(TraceIdRatioBased(0.0))
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    async with Harness(replay_app(), observer=TracingObserver()) as h:
        h.client.send("go", {"k": "a"}, key="a", traceparent=unsampled)
        h.client.send("go", {"k": "b"}, key="b")  # a root span, ratio 0: not sampled
        await h.idle()
        emitted = [e.envelope.traceparent for e in h.client.events() if e.envelope.type == "went"]
    assert EXPORTER.get_finished_spans() == ()
    # below an unsampled parent the engine never calls the SDK (only the client's own
    # send spans asked the sampler; "b" got the unsampled root traceparent from its send)
    assert set(SAMPLER.asked) == {"send go"}
    # the unsampled flags travel on; the root trace the client began does too
    assert sorted(t[-2:] for t in emitted if t is not None) == ["00", "00"]


async def test_a_sampled_parent_is_obeyed_even_when_new_traces_are_not(spans: object) -> None:
    SAMPLER.inner = ParentBased(ALWAYS_OFF)
    async with Harness(replay_app(), observer=TracingObserver()) as h:
        h.client.send("go", {"k": "a"}, key="a", traceparent=TRIGGER)
        await h.idle()
    names = {s.name for s in EXPORTER.get_finished_spans()}
    assert {"send go", "process go", "run proc", "step work", "send went"} <= names


async def test_each_task_attempt_is_a_span_of_its_own_with_its_error(spans: object) -> None:
    app = ov.App("tasked")
    runs: list[int] = []

    @app.task("flaky")
    def flaky(args: dict[str, Any]) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("the first attempt fails")
        return "ok"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.call("flaky", {}, retry=RETRY)

    clock = VirtualClock()
    async with (
        Harness(app, clock=clock, observer=TracingObserver()) as h,
        Worker(app, h.backend, poll=0.05),
    ):
        h.client.send("go", {}, traceparent=TRIGGER)
        async with asyncio.timeout(20):
            while [i.status for i in h.client.instances()] != ["completed"]:
                await h.idle()
                clock.advance(1)  # the retry's backoff, once the failure is applied
                await asyncio.sleep(0.01)
    finished = EXPORTER.get_finished_spans()
    sends = sorted(
        by_name(finished, "send default"),
        key=lambda s: dict(s.attributes or {})["overture.attempt"],
    )
    assert [dict(s.attributes or {})["overture.attempt"] for s in sends] == [1, 2]
    assert len({sid(s) for s in sends}) == 2
    # attempt 1's request continues the call's traceparent; a retry gets one of its own
    assert f"{sid(sends[0]):016x}" != TRIGGER[36:52]
    worked = {parent_of(s): s for s in by_name(finished, "process default")}
    assert set(worked) == {sid(s) for s in sends}
    first, second = worked[sid(sends[0])], worked[sid(sends[1])]
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert dict(first.attributes or {})["overture.attempt"] == 1
    assert second.status.status_code is not StatusCode.ERROR
    # each result is consumed as the child of the worker's span that produced it
    results = by_name(finished, "process overture.task.failed") + by_name(
        finished, "process overture.task.completed"
    )
    assert {parent_of(s) for s in results} == {sid(first), sid(second)}


async def test_combined_with_metrics_both_observe(spans: object) -> None:
    from prometheus_client import generate_latest

    from overture.observe.metrics import MetricsObserver
    from overture.runtime.observer import combine

    metrics = MetricsObserver()
    observer = combine(metrics, TracingObserver())
    assert observer.traces
    async with Harness(replay_app(), observer=observer) as h:
        h.client.send("go", {"k": "a"}, key="a", traceparent=TRIGGER)
        await h.idle()
    assert len(by_name(EXPORTER.get_finished_spans(), "step work")) == 1
    assert (
        'overture_instances_started_total{process="proc"} 1.0'
        in generate_latest(metrics.registry).decode()
    )


async def test_spans_still_open_when_the_engine_stops_are_ended(url: str, spans: object) -> None:
    """A step still running at stop (beyond the grace): its attempt span ends failed, its
    segment ends marked so; nothing is left open (the attempt runs again after restart)."""
    app = ov.App("stopped")
    release = asyncio.Event()

    running_now = asyncio.Event()

    async def slow() -> str:
        running_now.set()
        await release.wait()
        return "late"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.step(slow, name="slow")

    backend = open_backend(url)
    engine = ov.Engine(app, backend, observer=TracingObserver())  # running, as in overture run
    ov.Client(backend, app=app).send("go", {}, traceparent=TRIGGER)
    await engine.start()
    running = asyncio.create_task(engine.run())
    async with asyncio.timeout(10):
        await running_now.wait()
    await engine.stop(grace=0)
    await running
    backend.close()
    release.set()
    assert RECORDER.started == RECORDER.ended
    finished = EXPORTER.get_finished_spans()
    attempt = one(finished, "step slow")
    assert attempt.status.status_code is StatusCode.ERROR
    assert "engine stopped" in (attempt.status.description or "")
    segment = one(finished, "run proc")
    assert dict(segment.attributes or {})["overture.segment.end"] == "engine stopped"
    assert parent_of(attempt) == sid(segment)


def test_the_batch_processor_holds_a_burst_of_spans_without_dropping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit of 500 W1 instances ends 2,500 spans at once while the exporter is busy
    with the previous batch: none is dropped (the SDK's 2,048-span queue dropped them);
    ``OTEL_BSP_MAX_QUEUE_SIZE`` still decides when set."""
    import threading
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from overture.observe.tracing import batch_processor

    def burst(n: int) -> int:
        busy = threading.Event()
        exported: list[ReadableSpan] = []

        class Slow(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                exported.extend(spans)
                if any(s.name == "first" for s in spans):
                    busy.set()
                    time.sleep(0.3)  # the queue fills behind this export
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(batch_processor(Slow()))
        tracer = provider.get_tracer("burst")
        tracer.start_span("first").end()
        assert busy.wait(10)
        for _ in range(n):
            tracer.start_span("burst").end()
        provider.force_flush()
        provider.shutdown()
        return len(exported) - 1

    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.delenv("OTEL_BSP_MAX_QUEUE_SIZE", raising=False)
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    assert burst(3000) == 3000
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50")
    assert burst(3000) < 3000
