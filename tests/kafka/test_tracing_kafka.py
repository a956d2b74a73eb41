"""One trace across a Kafka hop: a process on one partition emits an event that starts a
process on another partition, run by another engine (a host of two engines, one per
partition, on the real broker); the emitted record carries the traceparent whose parent
is the emit's producer span, and the other engine's consume span is its child."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

import overture as ov
from overture.observe.tracing import TracingObserver
from overture.ports import partition_for
from overture.testing import Harness

from ..conftest import kafka_url
from ..observe.tracing_support import EXPORTER, RECORDER, installed


def keys_on_two_partitions() -> tuple[str, str]:
    first = "o1"
    other = next(
        f"k{n}" for n in range(100) if partition_for(f"k{n}", 2) != partition_for(first, 2)
    )
    return first, other


def hop_app(other: str) -> ov.App:
    app = ov.App("hop")

    @app.process(trigger="order.placed", key=lambda e: e.data["order"], emits=["order.moved"])
    async def here(ctx: ov.Context, event: ov.Event) -> str:
        ctx.emit("order.moved", {"order": event.data["order"]}, key=other)
        return "sent"

    @app.process(trigger="order.moved", key=lambda e: other, waits=["order.paid"])
    async def there(ctx: ov.Context, event: ov.Event) -> str:
        # a wait for a key of the first partition: a subscription there, the event
        # forwarded here (a second hop between the partitions' engines)
        await ctx.wait_for("order.paid", key=event.data["order"])
        return "arrived"

    return app


async def test_a_trace_follows_an_event_to_another_partitions_engine(
    kafka_bootstrap: str,
) -> None:
    first, other = keys_on_two_partitions()
    EXPORTER.clear()
    RECORDER.on = True
    try:
        with installed():
            observer = TracingObserver(messaging_system="kafka")
            async with Harness(hop_app(other), kafka_url(kafka_bootstrap), observer=observer) as h:
                assert len(h.host.engines) == 2  # one engine per partition
                tracer = trace.get_tracer("test")
                with tracer.start_as_current_span("checkout") as checkout:
                    h.client.send("order.placed", {"order": first}, key=first)
                async with asyncio.timeout(60):
                    while "waiting" not in {i.status for i in h.client.instances()}:
                        await h.idle()
                        await asyncio.sleep(0.05)
                    await h.idle()
                # later, in the same business flow
                context = trace.set_span_in_context(checkout)
                with tracer.start_as_current_span("pay", context=context):
                    h.client.send("order.paid", {"order": first}, key=first)
                async with asyncio.timeout(60):
                    while {i.status for i in h.client.instances()} != {"completed"} or len(
                        h.client.instances()
                    ) != 2:
                        await h.idle()
                        await asyncio.sleep(0.05)
                moved = [e for e in h.client.events() if e.envelope.type == "order.moved"]
    finally:
        RECORDER.on = False
    finished = EXPORTER.get_finished_spans()
    EXPORTER.clear()
    assert len({s.context.trace_id for s in finished if s.context is not None}) == 1
    by_name = {s.name: s for s in finished}
    produced = by_name["send order.moved"]
    consumed = by_name["process order.moved"]
    placed = by_name["process order.placed"]
    assert produced.context is not None and consumed.parent is not None
    assert consumed.parent.span_id == produced.context.span_id
    assert moved[0].envelope is not None and moved[0].envelope.traceparent is not None
    assert moved[0].envelope.traceparent[36:52] == f"{produced.context.span_id:016x}"
    partitions = {
        dict(s.attributes or {})["messaging.destination.partition.id"] for s in (placed, consumed)
    }
    assert partitions == {str(partition_for(first, 2)), str(partition_for(other, 2))}
    assert dict(consumed.attributes or {})["messaging.system"] == "kafka"
    runs = sorted((s for s in finished if s.name == "run there"), key=lambda s: s.start_time or 0)
    assert len(runs) == 2
    assert runs[0].parent is not None and consumed.context is not None
    assert runs[0].parent.span_id == consumed.context.span_id
    # the paid event, sent on the first partition, forwarded to the waiting instance's:
    # the delivery's consume span continues the paid event's trace
    paid = by_name["send order.paid"]
    delivered = by_name["process overture.wait.deliver"]
    assert paid.context is not None and delivered.parent is not None
    assert delivered.parent.span_id == paid.context.span_id
    assert delivered.context is not None and runs[1].parent is not None
    assert runs[1].parent.span_id == delivered.context.span_id
