"""A payload codec (here zlib compression) applied to every event's data on the way to the
log and undone on the way back, on every backend: clients, engine, waits, emits, handlers."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

import overture as ov
from overture.binding import from_record, to_binary
from overture.codec import Codec
from overture.events import Envelope
from overture.testing import Harness

from .conftest import Factory

SECRET = "swordfish-7c1d"


class Zlib:
    """Compression as a payload codec (what the tests prove the seam with)."""

    name = "zlib"

    def __init__(self) -> None:
        self.encoded = 0
        self.decoded = 0

    def encode(self, data: bytes) -> bytes:
        self.encoded += 1
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        self.decoded += 1
        return zlib.decompress(data)


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    secret: str


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    secret: str


class OrderShipped(ov.Event, type="order.shipped", key="order_id"):
    order_id: str
    secret: str


def _app(handled: list[str]) -> ov.App:
    app = ov.App("coded")

    @app.process(trigger=OrderPlaced, key="order_id", waits=[PaymentReceived], emits=[OrderShipped])
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        paid = await ctx.wait_for(PaymentReceived)
        ctx.emit(OrderShipped(order_id=order.order_id, secret=order.secret))
        return f"{order.secret}/{paid.secret}"

    @app.on(OrderShipped)
    async def note(event: OrderShipped) -> None:
        handled.append(event.secret)

    return app


def _raw_log(backend: Any) -> list[bytes]:
    log = backend.log
    return [r.value for p in range(log.partitions) for r in log.read(p, 0, 10_000)]


async def test_every_event_travels_encoded_and_is_decoded_where_it_is_read(
    harness: Factory,
) -> None:
    handled: list[str] = []
    app = _app(handled)
    payload = Zlib()
    async with harness(app, codec=Codec(app, payload=payload)) as h:
        h.client.send(OrderPlaced(order_id="o1", secret=SECRET))
        await h.idle()
        h.client.send(PaymentReceived(order_id="o1", secret="paid-" + SECRET))
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "completed", instance.error
        assert instance.result == f"{SECRET}/paid-{SECRET}"
        assert handled == [SECRET]  # the handler run's stored event, decoded
        raw = _raw_log(h.backend)
        # the trigger, the payment and the emitted event: none readable without the codec
        assert len(raw) >= 3
        assert all(SECRET.encode() not in value for value in raw)
        assert all(b'"payloadcodec":"zlib"' in value for value in raw)
        # ... and all of them decoded by the harness's client (it has the codec)
        seen = {e.envelope.type: e.envelope.data for e in h.client.events() if e.envelope}
        assert seen["order.shipped"] == {"order_id": "o1", "secret": SECRET}
        # a client without the payload codec says why it cannot read them
        with ov.Client(h.backend) as plain:
            errors = {e.error for e in plain.events()}
        assert errors == {
            "the event's data is encoded by payload codec 'zlib', which this codec lacks "
            "(it has none): give clients and engines the same payload codec"
        }
    assert payload.encoded >= 3 and payload.decoded >= 3


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_engine_without_the_payload_codec_dead_letters_such_events(
    kind: str, tmp_path: Any
) -> None:
    app = _app([])
    url = "memory://uncoded" if kind == "memory" else f"sqlite:///{tmp_path / 'u.db'}"
    async with Harness(app, url) as h:
        with ov.Client(h.backend, app=app, codec=Codec(app, payload=Zlib())) as coded:
            coded.send(OrderPlaced(order_id="o2", secret=SECRET))
        await h.idle()
        assert h.client.instances() == []
        (letter,) = h.client.dead_letters()
        assert letter.source == "decode" and "payload codec 'zlib'" in letter.reason
        assert SECRET.encode() not in letter.value  # kept as it arrived: still encoded


def test_a_wrong_codec_or_corrupt_data_is_refused_with_the_reason() -> None:
    class Other(Zlib):
        name = "other"

    envelope = Envelope(type="t", data={"a": 1})
    coded = Codec(payload=Zlib()).to_bytes(envelope)
    assert Codec(payload=Zlib()).from_bytes(coded) == envelope
    with pytest.raises(ov.MalformedEvent, match="payload codec 'zlib', which this codec lacks"):
        Codec(payload=Other()).from_bytes(coded)
    broken = coded.replace(b'"data_base64":"', b'"data_base64":"AAAA')
    with pytest.raises(ov.MalformedEvent, match="payload codec 'zlib' could not decode"):
        Codec(payload=Zlib()).from_bytes(broken)
    not_base64 = coded.replace(b'"data_base64":"', b'"data_base64":"!')
    with pytest.raises(ov.MalformedEvent, match="'data_base64' is not base64"):
        Codec(payload=Zlib()).from_bytes(not_base64)
    # data that merely mentions the name is not payload-coded
    plain = Envelope(type="t", data={"payloadcodec": "zlib"})
    assert Codec(payload=Zlib()).from_bytes(Codec().to_bytes(plain)) == plain


def test_kafka_binary_mode_carries_the_codec_output_as_the_value() -> None:
    """On Kafka the record value is the codec's bytes, ``ce_payloadcodec`` names the codec,
    and reading the record gives back the very bytes the codec wrote."""
    envelope = Envelope(type="t", data={"secret": SECRET}, partitionkey="k")
    coded = Codec(payload=Zlib()).to_bytes(envelope)
    key, headers, value = to_binary(coded)
    assert key == "k"
    assert ("ce_payloadcodec", b"zlib") in (headers or [])
    assert zlib.decompress(value) == b'{"secret":"' + SECRET.encode() + b'"}'
    read = from_record(b"k", tuple(headers or ()), value)
    assert read.error is None and read.value == coded


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_apps_payload_codec_is_used_by_its_clients_and_engines(
    kind: str, tmp_path: Any
) -> None:
    """Declared on the app, it needs no codec passed anywhere: ``Client(app=)`` and the
    engines a ``Host`` runs for the app (what ``overture run`` does) pick it up."""
    handled: list[str] = []
    plain = _app(handled)
    payload = Zlib()
    app = ov.App("coded", payload_codec=payload)
    for definition in plain.processes:
        app.process(trigger=definition.trigger, key=definition.key, waits=definition.waits)(
            definition.spec.fn
        )
    url = "memory://app-coded" if kind == "memory" else f"sqlite:///{tmp_path / 'a.db'}"
    async with Harness(app, url) as h:
        h.client.send(OrderPlaced(order_id="o3", secret=SECRET))
        h.client.send(PaymentReceived(order_id="o3", secret=SECRET))
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "completed", instance.error
        assert all(SECRET.encode() not in value for value in _raw_log(h.backend))
    assert payload.encoded >= 3 and payload.decoded >= 3
