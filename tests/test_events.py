"""The CloudEvents envelope, typed contracts and the structured-JSON codec."""

from __future__ import annotations

import copy
import pickle
import re
from dataclasses import fields

import pytest

import overture as ov
from overture.events import Envelope, decode, encode


class Placed(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int = 1


def test_round_trip_keeps_every_attribute() -> None:
    env = Envelope(
        type="t",
        data={"a": [1]},
        subject="s",
        dataschema="urn:x",
        partitionkey="k",
        traceparent="00-abc-def-01",
        tenant="acme",
    )
    assert decode(encode(env)) == env


def test_with_data_changes_only_the_data() -> None:
    env = Envelope(type="t", data={"a": 1}, partitionkey="k", tenant="acme")
    other = env.with_data({"b": 2})
    assert other.data == {"b": 2}
    assert [getattr(other, f.name) for f in fields(Envelope) if f.name != "data"] == [
        getattr(env, f.name) for f in fields(Envelope) if f.name != "data"
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{nope", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"id": "1", "source": "s"}', "lacks required attribute(s): type"),
        (b'{"id": "1", "source": "s", "type": "t", "specversion": "0.3"}', "specversion"),
        (b'{"id": "1", "source": "s", "type": "t", "time": "yesterday"}', "RFC 3339"),
    ],
)
def test_malformed_input_is_rejected_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(ov.MalformedEvent, match=re.escape(message)):
        decode(raw)


def test_typed_contract_validates_and_derives_its_key() -> None:
    event = Placed(order_id="o1", quantity=2)
    assert (event.envelope.type, event.key, event.data) == (
        "order.placed",
        "o1",
        {"order_id": "o1", "quantity": 2},
    )
    with pytest.raises(ov.EventValidationError, match="quantity"):
        Placed.from_envelope(Envelope(type="order.placed", data={"order_id": "o", "quantity": "x"}))
    # unknown fields from newer producers are ignored, not rejected
    newer = Placed.from_envelope(Envelope(type="order.placed", data={"order_id": "o", "extra": 1}))
    assert newer.order_id == "o"


def test_contract_definitions_are_checked() -> None:
    # pydantic warns first that the field shadows a property; Overture then refuses it
    with (
        pytest.warns(UserWarning, match="shadows"),
        pytest.raises(ov.ConfigError, match="reserved"),
    ):

        class Clash(ov.Event, type="clash"):
            key: str

    with pytest.raises(ov.ConfigError, match="not one of its fields"):

        class BadKey(ov.Event, type="bad", key="missing"):
            order_id: str


def test_with_attributes_sets_envelope_attributes_and_key() -> None:
    event = Placed(order_id="o1").with_attributes(subject="orders/o1", tenant="acme", key="k9")
    env = event.envelope
    assert (env.subject, env.tenant, event.partitionkey) == ("orders/o1", "acme", "k9")
    assert event.order_id == "o1"
    assert decode(encode(event.envelope)) == event.envelope


class Paid(ov.Event, type="order.paid", key="order_id"):
    order_id: str
    tags: list[str] = []


def test_an_event_keeps_its_cloudevent_through_copies_pickling_and_decoding() -> None:
    event = Paid(order_id="o1", tags=["a"])
    envelope = event.envelope
    assert event.envelope is envelope  # made once
    for twin in (event.model_copy(), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
        assert twin.envelope == envelope
        assert twin == event
    assert Paid(order_id="o1", tags=["a"]) != event  # another event: another id
    decoded = Paid.from_envelope(decode(encode(envelope)))
    assert decoded.envelope == envelope and decoded == event
    moved = event.with_attributes(key="o2", subject="s")
    assert (moved.key, moved.envelope.subject, moved.envelope.id) == ("o2", "s", envelope.id)
    assert (event.key, event.envelope.subject) == ("o1", None)  # the original is untouched


class Order(ov.Event, type="order.created", key="id"):
    """Business data that uses CloudEvents attribute names for its own fields."""

    id: str
    type: str
    source: str
    subject: str
    time: int
    tenant: str


def test_data_fields_may_use_cloudevents_attribute_names() -> None:
    order = Order(id="o-7", type="express", source="web", subject="shoes", time=3, tenant="t1")
    assert (order.id, order.type, order.source, order.subject, order.time, order.tenant) == (
        "o-7",
        "express",
        "web",
        "shoes",
        3,
        "t1",
    )
    envelope = order.envelope  # the CloudEvent is reachable, and distinct from the data
    assert (envelope.type, envelope.source, order.key) == ("order.created", "overture", "o-7")
    assert envelope.id != "o-7" and envelope.subject is None
    assert envelope.data == order.model_dump()
    back = Order.from_envelope(decode(encode(envelope.with_data({**envelope.data, "id": "o-8"}))))
    assert (back.id, back.type, back.envelope.id) == ("o-8", "express", envelope.id)
    # a plain event's data attributes mean the data too
    plain = ov.Event.of("thing.happened", {"id": 5, "type": "x"})
    assert (plain.id, plain.type, plain.envelope.type) == (5, "x", "thing.happened")  # type: ignore[attr-defined]
