"""Inputs that are wrong or repeated: never a crash, never a duplicate (issue 9, section 1).

Each test runs on every backend; a restart after the input shows that nothing was left
behind that would trip the engine again.
"""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

import overture as ov
from overture.core import identity
from overture.core import machine as m
from overture.events import Envelope, encode
from overture.ports import partition_for
from overture.testing import Harness

from .conftest import Factory, kafka_url


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


def order_app() -> tuple[ov.App, list[str]]:
    app = ov.App("shop")
    effects: list[str] = []

    async def charge(order_id: str) -> str:
        effects.append(order_id)
        return "ok"

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        return await ctx.step(charge, order.order_id)

    return app, effects


# -- one instance per trigger, whatever the producer ----------------------------------------

TIMELESS = orjson.dumps(
    {
        "specversion": "1.0",
        "id": "evt-no-time",
        "source": "/their/producer",
        "type": "order.placed",
        "data": {"order_id": "o1"},
    }
)
"""A CloudEvent without the optional ``time`` attribute, as another producer may write it."""


async def test_identical_bytes_without_time_start_one_instance(harness: Factory) -> None:
    app, effects = order_app()
    async with harness(app) as h:
        h.client.send_raw(TIMELESS, key="o1")
        await h.idle()
        h.client.send_raw(TIMELESS, key="o1")  # the producer's retry, in a later batch
        await h.idle()
        await h.restart()
        h.client.send_raw(TIMELESS, key="o1")  # and once more after a restart
        await h.idle()
        assert [i.status for i in h.client.instances()] == ["completed"]
        assert effects == ["o1"]


async def test_a_retry_with_a_new_time_is_the_same_trigger(harness: Factory) -> None:
    """CloudEvents identity is source + id: an SDK that stamps ``time`` anew on a retry
    sends the same event."""
    app, effects = order_app()
    async with harness(app) as h:
        first = Envelope(type="order.placed", data={"order_id": "o1"}, id="e1", source="/p")
        h.client.send_raw(encode(first), key="o1")
        await h.idle()
        later = first.time + timedelta(seconds=5)
        retry = Envelope(
            type="order.placed", data={"order_id": "o1"}, id="e1", source="/p", time=later
        )
        h.client.send_raw(encode(retry), key="o1")
        await h.idle()
        assert len(h.client.instances()) == 1
        assert effects == ["o1"]


async def test_an_instance_with_the_legacy_id_is_found_when_its_trigger_returns(
    harness: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances started by releases whose ids also hashed the trigger's time keep those
    ids; re-delivering their trigger must not start a second instance."""
    app, effects = order_app()
    trigger = Envelope(type="order.placed", data={"order_id": "o1"}, id="old-1", source="/p")
    legacy = m.legacy_instance_id_for("fulfil", trigger)
    assert legacy != m.instance_id_for("fulfil", trigger)
    async with harness(app) as h:
        # start the instance as an old release did, then restart on today's code
        with monkeypatch.context() as old_release:
            old_release.setattr(identity, "instance_id_for", identity.legacy_instance_id_for)
            h.client.send_raw(encode(trigger), key="o1")
            await h.idle()
        assert [i.id for i in h.client.instances()] == [legacy]
        await h.restart()
        h.client.send_raw(encode(trigger), key="o1")
        await h.idle()
        assert [i.id for i in h.client.instances()] == [legacy]
        assert effects == ["o1"]


# -- control events are input like any other ------------------------------------------------

BAD_CONTROL = [
    ("overture.cancel", {}),
    ("overture.cancel", {"instance_id": ["not", "a", "string"]}),
    ("overture.dlq.replay", {"id": 5}),
    ("overture.wait.subscribe", {}),
    ("overture.wait.subscribe", {"instance_id": "i", "seq": "1", "type": "t", "home": 0}),
    ("overture.wait.unsubscribe", {"instance_id": "i"}),
    ("overture.wait.deliver", {"instance_id": "i", "seq": 1}),
    ("overture.wait.deliver", {"instance_id": "i", "seq": 1, "event": {"no": "attributes"}}),
    ("overture.wait.deliver", None),
    ("overture.no.such.thing", {}),
]


def control_record(event_type: str, data: object, key: str | None = None) -> bytes:
    return encode(Envelope(type=event_type, data=data, partitionkey=key))


async def test_a_control_event_with_bad_data_is_dead_lettered_and_the_engine_goes_on(
    harness: Factory,
) -> None:
    app, effects = order_app()
    async with harness(app) as h:
        for event_type, data in BAD_CONTROL:
            h.client.send_raw(control_record(event_type, data, "o1"), key="o1")
        h.client.send(OrderPlaced(order_id="o1"))
        await h.idle()
        letters = h.client.dead_letters()
        assert sorted(d.event_type or "" for d in letters) == sorted(t for t, _ in BAD_CONTROL)
        reasons = {d.reason for d in letters}
        assert any(
            "'overture.wait.subscribe' has invalid data" in r and "home" in r for r in reasons
        )
        assert any("unknown control event type 'overture.no.such.thing'" in r for r in reasons)
        assert any("lacks required attribute" in r for r in reasons)  # the delivered event
        await h.restart()  # nothing left behind that trips the engine again
        h.client.send(OrderPlaced(order_id="o2"))
        await h.idle()
        assert sorted(effects) == ["o1", "o2"]
        assert len(h.client.dead_letters()) == len(BAD_CONTROL)


class PaymentReceived(ov.Event, type="payment.received", key="payment_id"):
    payment_id: str
    amount: int


async def test_remote_wait_messages_are_validated_where_they_flow(kafka_bootstrap: str) -> None:
    """On Kafka each partition has its engine, and a wait for a key of another partition
    travels as subscribe/deliver control events: bad ones between them are dead-lettered,
    the good ones still do their work, before and after a restart."""
    app = ov.App("remote")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def pay(ctx: ov.Context, order: OrderPlaced) -> int:
        paid = await ctx.wait_for(PaymentReceived, key=f"pay-{order.order_id}")
        return paid.amount

    order_key = "o1"
    payment_key = "pay-o1"
    assert partition_for(payment_key, 2) != partition_for(order_key, 2)  # a remote wait
    async with Harness(app, kafka_url(kafka_bootstrap, partitions=2)) as h:
        h.client.send(OrderPlaced(order_id=order_key))
        await h.idle()
        assert [i.status for i in h.client.instances()] == ["waiting"]
        # forged messages on both partitions: a subscription without a home, a delivery
        # without its event, a delivery of something that is not a CloudEvent
        h.client.send_raw(control_record("overture.wait.subscribe", {"seq": 1}, payment_key))
        h.client.send_raw(control_record("overture.wait.deliver", {"seq": 1}, order_key))
        forged = {"instance_id": h.client.instances()[0].id, "seq": 1, "event": {"x": 1}}
        h.client.send_raw(control_record("overture.wait.deliver", forged, order_key))
        await h.idle()
        assert len(h.client.dead_letters()) == 3
        await h.restart()
        h.client.send(PaymentReceived(payment_id=payment_key, amount=42))
        await h.idle()
        (done,) = h.client.instances()
        assert (done.status, done.result) == ("completed", 42)


async def test_the_client_refuses_reserved_and_invalid_types_and_the_engine_agrees(
    harness: Factory,
) -> None:
    app, effects = order_app()
    async with harness(app) as h:
        with pytest.raises(ov.EventValidationError, match="reserved for control events"):
            h.client.send("overture.wait.subscribe", {})
        with pytest.raises(ov.EventValidationError, match="reserved for control events"):
            h.client.send_many([Envelope(type="overture.cancel", data={"instance_id": "x"})])
        with pytest.raises(ov.EventValidationError, match="has invalid data"):
            h.client.send("overture.cancel", {"instance": "x"}, reserved=True)
        with pytest.raises(ov.MalformedEvent, match="U\\+0020"):
            h.client.send("order placed", {"order_id": "o1"})
        assert h.client.events() == []
        # the same rule holds for what other producers append: dead letters, no crash
        h.client.send_raw(encode(Envelope(type="order placed", data={})), key="o1")
        h.client.send_raw(encode(Envelope(type="bad\x07type", data={})), key="o1")
        h.client.send(OrderPlaced(order_id="o1"))
        h.client.send("overture.cancel", {"instance_id": "nobody"}, reserved=True)
        await h.idle()
        letters = h.client.dead_letters()
        assert sorted(d.source for d in letters) == ["decode", "decode", "route"]
        decoded = [d for d in letters if d.source == "decode"]
        assert all("a CloudEvents type has no whitespace" in d.reason for d in decoded)
        (unknown,) = [d for d in letters if d.source == "route"]
        assert "cancel: no instance 'nobody'" in unknown.reason
        assert effects == ["o1"]


# -- numbers survive exactly or are refused ---------------------------------------------------


async def test_numbers_beyond_64_bits_or_not_finite_are_refused_on_every_path(
    harness: Factory,
) -> None:
    app = ov.App("numbers")
    seen: list[object] = []

    @app.on("measured")
    async def record(event: ov.Event) -> None:
        seen.append(event.data)

    async with harness(app) as h:
        with pytest.raises(ov.EventValidationError, match=r"data\.v\[0\]: the integer"):
            h.client.send("measured", {"v": [2**64]})
        with pytest.raises(ov.EventValidationError, match=r"data\.v: nan is not a JSON number"):
            h.client.send("measured", {"v": float("nan")})
        assert h.client.events() == []
        # another producer's bytes: a big integer would be rounded by the decoder
        head = b'{"specversion": "1.0", "source": "/s", "type": "measured", '
        h.client.send_raw(head + b'"id": "a", "data": {"v": %d}}' % 2**70)
        # at the edge of 64 bits, and digits inside a string, which are not a number
        h.client.send_raw(
            head + b'"id": "b", "data": {"v": %d, "w": "%s"}}' % (2**64 - 1, b"1" * 40)
        )
        await h.idle()
        (letter,) = h.client.dead_letters()
        assert (
            letter.source == "decode"
            and "data.v: the integer 1180591620717411303424" in letter.reason
        )
        assert seen == [{"v": 2**64 - 1, "w": "1" * 40}]
        await h.restart()
        await h.idle()
        assert len(h.client.dead_letters()) == 1


async def test_the_client_refuses_attributes_the_engine_would_dead_letter(
    harness: Factory,
) -> None:
    """An empty or non-string ``id`` / ``source`` is a CloudEvent the engine dead-letters,
    and a ``time`` that is not a datetime cannot even be encoded: the client refuses each
    with the attribute's name, and writes nothing."""
    app, effects = order_app()
    async with harness(app) as h:
        bad: list[dict[str, object]] = [{"id": ""}, {"id": 5}, {"source": ""}]
        for attributes in bad:
            with pytest.raises(ov.MalformedEvent, match=str(next(iter(attributes)))):
                h.client.send("order.placed", {"order_id": "o1"}, **attributes)
        with pytest.raises(ov.MalformedEvent, match="'time'"):
            h.client.send("order.placed", {"order_id": "o1"}, time="2026-01-01T00:00:00Z")
        assert h.client.events() == []
        # the engine's verdict on the empty ones, appended as any producer could (an
        # integer id is dead-lettered by memory and SQLite, read as text on Kafka)
        for attributes in bad[::2]:
            envelope = Envelope(type="order.placed", data={"order_id": "o1"}, **attributes)  # type: ignore[arg-type]
            h.client.send_raw(encode(envelope), key="o1")
        await h.idle()
        assert [d.source for d in h.client.dead_letters()] == ["decode"] * 2
        assert effects == []


async def test_raw_events_with_attributes_that_are_not_strings_read_alike_everywhere(
    harness: Factory,
) -> None:
    """CloudEvents' ``id``, ``source`` and ``type`` are Strings: a raw event with
    ``"id": 5`` is dead-lettered for that on every backend (Kafka's binary mode once
    turned it into the id "5" and ran it), while integer data is data everywhere."""
    app = ov.App("raw-ints")
    seen: list[tuple[str, object]] = []

    @app.on("note.added")
    async def noted(event: ov.Event) -> None:
        seen.append((event.envelope.id, event.envelope.data))

    def raw(**attributes: object) -> bytes:
        event = {"specversion": "1.0", "id": "n1", "source": "s", "type": "note.added"}
        return orjson.dumps({**event, **attributes})

    async with harness(app) as h:
        h.client.send_raw(raw(id=5, data=7), key="k")
        h.client.send_raw(raw(source=3), key="k")
        h.client.send_raw(raw(id="n2", data=8), key="k")
        await h.idle()
        assert seen == [("n2", 8)]
        reasons = sorted(d.reason for d in h.client.dead_letters())
        assert reasons == [
            "CloudEvent attribute 'id' must be a string",
            "CloudEvent attribute 'source' must be a string",
        ]


async def test_a_cancel_that_reaches_no_instance_is_dead_lettered_not_dropped(
    harness: Factory,
) -> None:
    """A cancel written by another producer with the wrong key lands on a partition that
    does not hold the instance (Kafka: each engine holds its own partitions' instances):
    it is dead-lettered, saying why, instead of silently doing nothing; a cancel for an
    instance that already finished is no error."""
    app = ov.App("cancels")

    @app.process(trigger="job.started")
    async def job(ctx: ov.Context, event: ov.Event) -> str:
        if event.data.get("quick"):
            return "done"
        await ctx.sleep(timedelta(hours=1))
        return "slept"

    async with harness(app) as h:
        h.client.send("job.started", {}, key="k1")
        h.client.send("job.started", {"quick": True}, key="k2")
        await h.idle()
        running = next(i for i in h.client.instances() if i.status != "completed")
        finished = next(i for i in h.client.instances() if i.status == "completed")
        partitions = h.client.backend.log.partitions
        home = partition_for("k1", partitions)
        others = [f"w{n}" for n in range(100) if partition_for(f"w{n}", partitions) != home]
        wrong = others[0] if others else "w0"  # one partition: every key is the right one
        h.client.send("overture.cancel", {"instance_id": running.id}, key=wrong, reserved=True)
        h.client.send("overture.cancel", {"instance_id": finished.id}, key="k2", reserved=True)
        await h.idle()
        if h.client.backend.capabilities.partitioned:  # the cancel missed the instance
            (letter,) = h.client.dead_letters()
            assert letter.source == "route"
            assert f"cancel: no instance {running.id!r} on partition" in letter.reason
            assert h.client.instance(running.id).status == "waiting"
            h.client.cancel(running.id)  # the client keys it right
            await h.idle()
        else:  # one engine holds every partition: the key does not matter
            assert h.client.dead_letters() == []
        assert h.client.instance(running.id).status == "cancelled"
        assert h.client.instance(finished.id).status == "completed"


async def test_send_many_takes_events_and_envelopes_and_refuses_anything_else(
    harness: Factory,
) -> None:
    app, effects = order_app()
    async with harness(app) as h:
        with pytest.raises(TypeError, match="Event objects or envelopes, not dict"):
            h.client.send_many([OrderPlaced(order_id="o0"), {"type": "order.placed"}])  # type: ignore[list-item]
        with pytest.raises(ov.EventValidationError, match="reserved for control events"):
            h.client.send_many([OrderPlaced(order_id="o0"), ov.Event.of("overture.cancel", {})])
        assert h.client.events() == []  # all or none
        ids = h.client.send_many(
            [OrderPlaced(order_id="o1"), h.client.envelope(OrderPlaced(order_id="o2"))]
        )
        async with ov.AsyncClient(h.url, app=app) as aclient:
            ids += await aclient.send_many([OrderPlaced(order_id="o3")])
            with pytest.raises(TypeError, match="not str"):
                await aclient.send_many(["order.placed"])  # type: ignore[list-item]
        await h.idle()
        assert [e.envelope.id for e in h.client.events() if e.envelope] == ids
        assert sorted(effects) == ["o1", "o2", "o3"]
