"""One trace across a Kafka hop: a process on one partition emits an event that starts a
process on another partition, run by another engine (a host of two engines, one per
partition, on the real broker); the emitted record carries the traceparent whose parent
is the emit's producer span, and the other engine's consume span is its child."""

from __future__ import annotations

import asyncio

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

    @app.process(trigger="order.moved")
    async def there(ctx: ov.Context, event: ov.Event) -> str:
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
                h.client.send("order.placed", {"order": first}, key=first)
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
    assert by_name["run there"].parent is not None
    assert by_name["run there"].parent.span_id == consumed.context.span_id  # type: ignore[union-attr]
