"""Trace context and tenant carried over: an emitted event continues its trigger's trace
and inherits its tenant, on every backend, deterministically (a replay emits the same)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import overture as ov
from overture.codec import Codec
from overture.core import machine as m
from overture.events import Envelope, encode
from overture.testing import Harness
from overture.tracecontext import continue_trace, traceparent_problem

from .conftest import Factory

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"
OTHER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


class OrderAccepted(ov.Event, type="order.accepted", key="order_id"):
    order_id: str


class OrderShipped(ov.Event, type="order.shipped", key="order_id"):
    order_id: str


def _app() -> ov.App:
    app = ov.App("traced")

    @app.process(trigger=OrderPlaced, key="order_id", emits=[OrderAccepted, "audit"])
    async def accept(ctx: ov.Context, order: OrderPlaced) -> None:
        await ctx.sleep(timedelta(seconds=1))  # the emits come after a replay point
        ctx.emit(OrderAccepted(order_id=order.order_id))
        ctx.emit(_event("audit", tenant="ops", traceparent=OTHER))

    @app.process(trigger=OrderAccepted, key="order_id", emits=[OrderShipped])
    async def ship(ctx: ov.Context, accepted: OrderAccepted) -> None:
        ctx.emit(OrderShipped(order_id=accepted.order_id))

    return app


def _event(event_type: str, **attributes: Any) -> ov.Event:
    return ov.Event.of(event_type, {"n": 1}).with_attributes(**attributes)


def _emitted(h: Any) -> dict[str, Envelope]:
    out = {}
    for logged in h.client.events():
        assert logged.envelope is not None
        out[logged.envelope.type] = logged.envelope
    return out


def _parts(traceparent: str | None) -> tuple[str, str, str]:
    assert traceparent is not None and traceparent_problem(traceparent) is None, traceparent
    _, trace, parent, flags = traceparent.split("-")
    return trace, parent, flags


async def test_emitted_events_continue_the_trace_and_keep_the_tenant(harness: Factory) -> None:
    async with harness(_app()) as h:
        h.client.send(OrderPlaced(order_id="o1"), tenant="acme", traceparent=PARENT)
        await h.advance(1)
        events = _emitted(h)
    trigger, accepted, shipped = (
        events["order.placed"],
        events["order.accepted"],
        events["order.shipped"],
    )
    assert trigger.traceparent == PARENT
    hops = [_parts(e.traceparent) for e in (trigger, accepted, shipped)]
    assert {trace for trace, _, _ in hops} == {TRACE}  # one trace across both hops
    assert len({parent for _, parent, _ in hops}) == 3  # each hop a new parent id
    assert {flags for _, _, flags in hops} == {"01"}  # sampled stays sampled
    assert accepted.tenant == shipped.tenant == "acme"
    # explicit values on the emitted event win over the trigger's
    assert (events["audit"].tenant, events["audit"].traceparent) == ("ops", OTHER)


async def test_an_untraced_trigger_starts_no_trace_but_passes_its_tenant(
    harness: Factory,
) -> None:
    async with harness(_app()) as h:
        h.client.send(OrderPlaced(order_id="o2"), tenant="acme")
        await h.advance(1)
        events = _emitted(h)
    assert events["order.accepted"].traceparent is None
    assert events["order.shipped"].traceparent is None
    assert events["order.shipped"].tenant == "acme"


async def test_an_invalid_traceparent_is_refused_by_the_client_and_ignored_by_the_engine(
    harness: Factory,
) -> None:
    bad = Envelope(
        type="order.placed", data={"order_id": "o3"}, partitionkey="o3", traceparent="00-xyz"
    )
    async with harness(_app()) as h:
        with pytest.raises(ov.MalformedEvent, match="traceparent '00-xyz' is not W3C"):
            h.client.send(OrderPlaced(order_id="o3"), traceparent="00-xyz")
        h.client.send_raw(encode(bad), key="o3")  # a producer that does not check
        await h.advance(1)
        events = _emitted(h)
        assert h.client.dead_letters() == []
        assert {i.status for i in h.client.instances()} == {"completed"}
    # read back through the codec: the invalid value is dropped (W3C: ignore it) ...
    assert events["order.placed"].traceparent is None
    # ... so there is no trace to continue
    assert events["order.accepted"].traceparent is None


def test_the_continued_trace_is_w3c_and_derived_from_the_seed_alone() -> None:
    child = continue_trace(PARENT, "i1:2")
    assert child == continue_trace(PARENT, "i1:2")
    assert child != continue_trace(PARENT, "i1:3")
    assert child is not None and traceparent_problem(child) is None
    assert child.startswith(f"00-{TRACE}-") and child.endswith("-01")
    assert continue_trace(None, "i1:2") is None
    assert continue_trace("00-xyz", "i1:2") is None
    # a later version's extra fields are ignored; the continuation is version 00
    later = f"01-{TRACE}-b7ad6b7169203331-01-extra"
    assert traceparent_problem(later) is None
    assert continue_trace(later, "i1:2") == child


@pytest.mark.parametrize(
    "value",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # v00 has 4 fields
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # uppercase
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # 31 digits
    ],
)
def test_invalid_traceparents(value: str) -> None:
    assert traceparent_problem(value) is not None


def test_a_replay_emits_the_identical_envelope() -> None:
    """The journal and dedup by event id need the emitted bytes to be the same whether
    the emit runs live or after the instance was rebuilt from its journal."""
    app = _app()
    (definition,) = app.triggers("order.placed")
    trigger = Envelope(
        type="order.placed",
        data={"order_id": "o4"},
        partitionkey="o4",
        tenant="acme",
        traceparent=PARENT,
    )
    codec = Codec(app)
    live = m.Machine(definition.spec, "i-4", "o4", codec=codec)
    (timer,) = live.start(trigger, 100.0)
    assert isinstance(timer, m.StartTimer)
    journal = list(live.journal)
    first = [c for c in live.resolve(timer.seq, 101.0, ok=None) if isinstance(c, m.EmitEvent)]

    rebuilt = m.Machine(definition.spec, "i-4", "o4", codec=codec)
    assert rebuilt.replay(journal) == []
    again = [c for c in rebuilt.resolve(timer.seq, 101.0, ok=None) if isinstance(c, m.EmitEvent)]
    assert [codec.to_bytes(c.envelope) for c in again] == [
        codec.to_bytes(c.envelope) for c in first
    ]
    assert first[0].envelope.tenant == "acme"
    assert first[0].envelope.traceparent == continue_trace(PARENT, f"i-4:{first[0].seq}")


def test_an_explicit_invalid_traceparent_fails_the_emit() -> None:
    app = ov.App("bad-emit")

    @app.process(trigger="go")
    async def go(ctx: ov.Context, event: ov.Event) -> None:
        ctx.emit(_event("out", traceparent="nope"))

    (definition,) = app.triggers("go")
    machine = m.Machine(definition.spec, "i-5", None)
    (finished,) = machine.start(Envelope(type="go", data={}), 1.0)
    assert isinstance(finished, m.Finished) and finished.status == "failed"
    assert finished.error is not None and "traceparent 'nope'" in finished.error["message"]


async def test_an_engine_that_replays_emits_the_same_bytes(harness: Factory) -> None:
    """On every backend: the events emitted after a crash (the instance rebuilt from its
    journal by a new engine) are byte for byte those of a run without the crash."""
    trigger = OrderPlaced(order_id="o9").with_attributes(
        id="trigger-o9", tenant="acme", traceparent=PARENT
    )

    def emitted(h: Any) -> list[bytes]:
        log = h.backend.log
        return sorted(
            r.value
            for p in range(log.partitions)
            for r in log.read(p, 0, 1000)
            if b'"order.placed"' not in r.value
        )

    async with Harness(_app()) as calm:  # memory, never restarted
        calm.client.send(trigger)
        await calm.advance(1)
        expected = emitted(calm)
    async with harness(_app()) as h:
        h.client.send(trigger)
        await h.idle()
        await h.restart()  # the instance sleeps; its emits come after the replay
        await h.advance(1)
        assert emitted(h) == expected
    assert len(expected) == 3  # accepted, audit, shipped
