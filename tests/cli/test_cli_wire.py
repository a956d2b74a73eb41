"""``overture dlq`` and ``overture events`` on Kafka records whose bytes are not text: the
JSON gives back the exact bytes, the tables show them escaped, a replay reads them again."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import orjson
import pytest
from cli_helpers import Invoke, ok
from confluent_kafka import Producer
from tests.conftest import kafka_url

import overture as ov
from overture.backends.kafka.backend import KafkaBackend
from overture.testing import Harness

LONG_KEY = struct.pack(">q", 1_733_000_000_000)  # Java's LongSerializer: not UTF-8
JUNK = b"\xc3\x28 junk"
JUNK_HEADERS = [("x-trace", b"\xff\x01"), ("x-null", None), ("x-text", b"plain")]


def order_app(quantity: type) -> ov.App:
    class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
        order_id: str
        quantity: quantity  # type: ignore[valid-type]

    app = ov.App("shop")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: Any) -> Any:
        return order.quantity

    return app


ORDER_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"e9"),
    ("ce_source", b"/java"),
    ("ce_type", b"order.placed"),
    ("ce_partitionkey", b"o9"),
    ("content-type", b"application/json"),
    ("x-trace", b"\x80"),
]
ORDER = b'{"order_id": "o9", "quantity": "many"}'


@pytest.fixture
def url(kafka_bootstrap: str) -> str:
    return kafka_url(kafka_bootstrap, partitions=1)


def produce(h: Harness, bootstrap: str) -> None:
    broker = h.backend
    assert isinstance(broker, KafkaBackend)
    producer = Producer({"bootstrap.servers": bootstrap})
    topic = broker.settings.events_topic
    producer.produce(topic, JUNK, b"\xff\xfe", headers=JUNK_HEADERS)
    producer.produce(topic, ORDER, LONG_KEY, headers=ORDER_HEADERS)
    producer.flush(10)


def unpack(text: str | None, encoding: str | None) -> bytes | None:
    if text is None:
        return None
    return base64.b64decode(text) if encoding == "base64" else text.encode()


async def test_dlq_list_json_gives_back_the_exact_bytes_and_the_table_escapes_them(
    invoke: Invoke, url: str, kafka_bootstrap: str
) -> None:
    async with Harness(order_app(int), url) as h:
        produce(h, kafka_bootstrap)
        await h.idle()

    out = ok(invoke("dlq", "list", "--json"))
    assert "\ufffd" not in out  # never a replacement character
    junk, order = (json.loads(line) for line in out.splitlines())
    assert junk["source"] == "decode" and junk["reason"].startswith("not JSON")
    assert unpack(junk["value"], junk["value_encoding"]) == JUNK
    assert junk["value_encoding"] == "base64" and junk["record_key_encoding"] == "base64"
    assert unpack(junk["record_key"], junk["record_key_encoding"]) == b"\xff\xfe"
    headers = [(h["name"], unpack(h["value"], h["encoding"])) for h in junk["headers"]]
    assert headers == JUNK_HEADERS
    assert junk["headers"][2] == {"name": "x-text", "value": "plain", "encoding": "utf-8"}
    assert order["source"] == "validate" and "quantity" in order["reason"]
    assert order["key"] == "o9" and order["value"] == ORDER.decode()
    assert unpack(order["record_key"], order["record_key_encoding"]) == LONG_KEY
    assert [(h["name"], unpack(h["value"], h["encoding"])) for h in order["headers"]] == [
        *ORDER_HEADERS
    ]

    table = ok(invoke("dlq", "list"))
    assert "\\xc3( junk" in table and "x-trace=\\xff\\x01" in table and "x-null=(null)" in table
    assert "record key: \\xff\\xfe" in table

    # ``overture events`` lists both records instead of dying on them
    events = [json.loads(line) for line in ok(invoke("events", "--json")).splitlines()]
    assert [e["offset"] for e in events] == [0, 1]
    assert events[0]["raw_encoding"] == "base64"
    assert base64.b64decode(events[0]["raw"]) == JUNK and "not JSON" in events[0]["error"]
    assert events[1]["type"] == "order.placed" and events[1]["partitionkey"] == "o9"
    assert events[1]["data"] == orjson.loads(ORDER)
    table = ok(invoke("events"))
    assert "<undecodable>" in table and "\\xc3(" in table and "order.placed" in table


async def test_a_replayed_kafka_dead_letter_is_read_again_from_its_bytes(
    invoke: Invoke, url: str, kafka_bootstrap: str
) -> None:
    """Once the contract accepts the data, the replay routes the record as a fresh
    delivery of the same bytes would be: by its ``ce_partitionkey``, with its data."""
    async with Harness(order_app(int), url) as h:
        produce(h, kafka_bootstrap)
        await h.idle()
    async with Harness(order_app(str), url) as h:
        letter = next(d for d in h.client.dead_letters() if d.source == "validate")
        ok(invoke("dlq", "replay", letter.id))
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.key, instance.status, instance.result) == ("o9", "completed", "many")
        assert instance.trigger_id == "e9"
        # the junk is parked again by a replay, with the same bytes
        junk = next(d for d in h.client.dead_letters() if d.source == "decode")
        ok(invoke("dlq", "replay", junk.id))
        await h.idle()
        (again,) = h.client.dead_letters()
        assert (again.raw_key, again.headers, again.value) == (
            b"\xff\xfe",
            tuple(JUNK_HEADERS),
            JUNK,
        )
