"""Records written by clients nobody here wrote: keys that are not text, header values
that are not UTF-8, structured and binary content mode from a plain
``confluent_kafka.Producer`` and from the official CloudEvents SDK. None of them may stop
a partition, and what the engine cannot use is dead-lettered exactly as it arrived."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import kafka as ce_kafka_v1
from cloudevents.v1.http import CloudEvent as CloudEventV1
from confluent_kafka import Producer

import overture as ov
from overture.backends.kafka.backend import KafkaBackend
from overture.ports import partition_for
from overture.testing import Harness

from ..conftest import REPO_ROOT, kafka_url

LONG_KEY = struct.pack(">q", 1_733_000_000_000)
"""A key as Java's ``LongSerializer`` writes it: 8 raw bytes, here not UTF-8."""
NUL_KEY = struct.pack(">q", 42)
"""Also a ``Long``: UTF-8 (seven NULs and ``*``) but no CloudEvents String."""
BINARY_KEY = struct.pack(">q", -2)  # b"\xff\xff\xff\xff\xff\xff\xff\xfe"


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int = 1


def shop(seen: list[Any]) -> ov.App:
    """A typed process on ``order.placed`` and an untyped handler on ``note.added``."""
    app = ov.App("shop")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> int:
        return order.quantity

    @app.on("note.added")
    async def note(event: ov.Event) -> None:
        seen.append((event.partitionkey, event.data))

    return app


def binary(
    event_type: str, event_id: str, *extra: tuple[str, bytes | None]
) -> list[tuple[str, bytes | None]]:
    """Binary-mode headers, as a hand-written producer sets them."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"/java/producer"),
        ("ce_type", event_type.encode()),
        ("content-type", b"application/json"),
        *extra,
    ]


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap})


def topic_of(h: Harness) -> str:
    broker = h.backend
    assert isinstance(broker, KafkaBackend)
    return broker.settings.events_topic


async def idle(h: Harness) -> None:
    """Run until idle, failing fast (not at the test timeout) if the engines died."""
    await asyncio.wait_for(h.idle(), 60)
    assert h.host._failed is None, h.host._failed


def results(h: Harness) -> dict[str | None, tuple[str, Any]]:
    return {i.key: (i.status, i.result) for i in h.client.instances()}


async def test_a_key_that_is_not_text_stops_neither_the_partition_nor_a_restart(
    kafka_bootstrap: str,
) -> None:
    """Before: the fetcher decoded keys strictly, died on the 8-byte key, and every
    restart died on the same record. Now the record is read (keyless, its bytes kept) or
    dead-lettered with its key, headers and value exactly as they arrived."""
    h = Harness(shop([]), kafka_url(kafka_bootstrap, partitions=1))
    async with h:
        topic = topic_of(h)
        p = producer(kafka_bootstrap)
        data = orjson.dumps
        p.produce(topic, data({"order_id": "o1"}), b"o1", headers=binary("order.placed", "e1"))
        # a Long key and no partitionkey header: a keyless event (routed by its data)
        p.produce(
            topic,
            data({"order_id": "o2", "quantity": 2}),
            LONG_KEY,
            headers=binary("order.placed", "e2"),
        )
        # a binary key with the partition key in ce_partitionkey: routed by the header;
        # a header of the application's own that is not UTF-8 is just carried along
        extra = (("ce_partitionkey", b"o3"), ("x-trace", b"\xff\x00\xfe"))
        p.produce(
            topic,
            data({"order_id": "o3", "quantity": 3}),
            BINARY_KEY,
            headers=binary("order.placed", "e3", *extra),
        )
        # unusable: a value that is not JSON, under a binary key and a binary header
        junk_headers = [("x-trace", b"\xff\xfe"), ("x-null", None)]
        p.produce(topic, b"\xc3\x28 not json", BINARY_KEY, headers=junk_headers)
        # unusable: an attribute header that is not UTF-8
        bad_type = [(n, b"order.\xffplaced" if n == "ce_type" else v) for n, v in binary("x", "e5")]
        p.produce(topic, data({"order_id": "o5"}), LONG_KEY, headers=bad_type)
        p.produce(topic, data({"order_id": "o6"}), b"o6", headers=binary("order.placed", "e6"))
        p.flush(10)
        await idle(h)

        assert results(h) == {
            "o1": ("completed", 1),
            "o2": ("completed", 2),
            "o3": ("completed", 3),
            "o6": ("completed", 1),
        }
        letters = {letter.offset: letter for letter in h.client.dead_letters()}
        assert sorted(letters) == [3, 4]
        junk = letters[3]
        assert (junk.raw_key, junk.headers, junk.value) == (
            BINARY_KEY,
            tuple(junk_headers),
            b"\xc3\x28 not json",
        )
        assert junk.source == "decode" and junk.key is None
        assert junk.reason.startswith("not JSON") and "char 0" in junk.reason
        typo = letters[4]
        assert typo.raw_key == LONG_KEY and typo.value == data({"order_id": "o5"})
        assert typo.headers == tuple(bad_type)
        assert typo.reason == "header 'ce_type' is not UTF-8 (byte 0xff at position 6)"

        # a restart reads the same records again from the committed offsets: no crash,
        # nothing twice, and the partition goes on
        await h.restart()
        p.produce(topic, data({"order_id": "o7"}), NUL_KEY, headers=binary("order.placed", "e7"))
        p.flush(10)
        await idle(h)
        assert len(h.client.instances()) == 5 and results(h)["o7"] == ("completed", 1)
        assert len(h.client.dead_letters()) == 2

        # ``overture events`` lists every record, the unusable ones with their reason
        events = h.client.events()
        assert [e.offset for e in events] == list(range(7))
        assert [e.envelope.partitionkey for e in events if e.envelope] == [
            "o1",
            None,
            "o3",
            "o6",
            None,
        ]
        broken = {e.offset: e for e in events if e.envelope is None}
        assert broken[3].raw == b"\xc3\x28 not json"
        assert broken[4].error == typo.reason


async def test_a_forwarded_record_is_dead_lettered_with_the_bytes_that_arrived(
    kafka_bootstrap: str,
) -> None:
    """A record keyed for another partition travels there through the internal topic as
    it arrived, so a dead letter made there still has the producer's key and headers
    (before: the engine's own binary-mode re-encoding)."""
    h = Harness(shop([]), kafka_url(kafka_bootstrap, partitions=2))
    async with h:
        home = partition_for("o9", 2)
        headers = binary("order.placed", "e9", ("ce_partitionkey", b"o9"), ("x-b", b"\x80"))
        value = b'{"order_id": "o9", "quantity": "many"}'  # invalid for the contract
        p = producer(kafka_bootstrap)
        p.produce(topic_of(h), value, LONG_KEY, partition=1 - home, headers=headers)
        p.flush(10)
        await idle(h)
        (letter,) = h.client.dead_letters()
        assert letter.source == "validate" and "quantity" in letter.reason
        assert (letter.raw_key, letter.headers, letter.value) == (LONG_KEY, tuple(headers), value)
        # read from the internal topic's partition (logical 2 + home), held by home's engine
        assert letter.key == "o9" and letter.id == f"{2 + home}:0" and letter.partition == home


async def test_structured_and_binary_mode_from_the_cloudevents_sdk_and_by_hand(
    kafka_bootstrap: str,
) -> None:
    """Structured mode is recognised by ``content-type: application/cloudevents…``, not by
    the absence of ``ce_`` headers (before: a structured record with ``ce_`` headers was
    read as binary mode; the typed event was dead-lettered, the untyped handler got the
    whole envelope as its data). Without a ``partitionkey`` the record key is the key."""
    seen: list[Any] = []
    h = Harness(shop(seen), kafka_url(kafka_bootstrap, partitions=1))
    async with h:
        topic = topic_of(h)
        p = producer(kafka_bootstrap)

        def send(message: Any) -> None:
            headers = message.headers
            headers = list(headers.items()) if isinstance(headers, dict) else headers
            p.produce(topic, message.value, message.key, headers=headers)

        def event(event_type: str, data: Any, **attributes: Any) -> CloudEvent:
            attributes = {
                "type": event_type,
                "source": "/sdk",
                "id": event_type + str(data),
                **attributes,
            }
            return CloudEvent(attributes=attributes, data=data)

        # the SDK's own API (cloudevents.core.bindings.kafka)
        send(
            ce_kafka.to_structured_event(
                event("order.placed", {"order_id": "s1"}, partitionkey="s1")
            )
        )
        send(
            ce_kafka.to_binary_event(
                event("order.placed", {"order_id": "b1", "quantity": 2}, partitionkey="b1")
            )
        )
        send(
            ce_kafka.to_structured_event(
                event("note.added", {"text": "structured"}, partitionkey="n1")
            )
        )
        send(ce_kafka.to_binary_event(event("note.added", {"text": "binary"}, partitionkey="n2")))
        # no partitionkey attribute: the record key is the partition key
        keyed = ce_kafka.to_structured_event(
            event("note.added", {"text": "record key"}), key_mapper=lambda e: "n3"
        )
        send(keyed)
        # a structured record that also carries ce_ headers (which say something else)
        also = ce_kafka.to_structured_event(
            event("order.placed", {"order_id": "s2", "quantity": 4})
        )
        decoy = [
            (name, value)
            for name, value in binary("note.added", "decoy", ("ce_partitionkey", b"decoy"))
            if name != "content-type"
        ]
        headers = [*decoy, *also.headers.items()]  # content-type: the structured one
        p.produce(topic, also.value, b"s2", headers=headers)
        note = ce_kafka.to_structured_event(event("note.added", {"text": "with ce_ headers"}))
        p.produce(topic, note.value, None, headers=[*decoy, *note.headers.items()])
        # the SDK's 1.x API (cloudevents.kafka in 1.x, cloudevents.v1.kafka since 2.0)
        old = CloudEventV1(
            {"type": "order.placed", "source": "/sdk1", "datacontenttype": "application/json"},
            {"order_id": "v1s", "quantity": 5},
        )
        send(ce_kafka_v1.to_structured(old, key_mapper=lambda e: "v1s"))
        old = CloudEventV1(
            {
                "type": "order.placed",
                "source": "/sdk1",
                "datacontenttype": "application/json",
                "partitionkey": "v1b",
            },
            {"order_id": "v1b", "quantity": 6},
        )
        send(ce_kafka_v1.to_binary(old))
        # an event format Overture does not read: dead-lettered, saying so
        p.produce(
            topic, b"\x00avro", b"a1", headers=[("content-type", b"application/cloudevents+avro")]
        )
        p.flush(10)
        await idle(h)

        assert results(h) == {
            "s1": ("completed", 1),
            "b1": ("completed", 2),
            "s2": ("completed", 4),
            "v1s": ("completed", 5),
            "v1b": ("completed", 6),
        }
        assert sorted(seen, key=str) == sorted(
            [
                ("n1", {"text": "structured"}),
                ("n2", {"text": "binary"}),
                ("n3", {"text": "record key"}),
                (None, {"text": "with ce_ headers"}),
            ],
            key=str,
        )
        (letter,) = h.client.dead_letters()
        assert letter.reason.startswith(
            "structured-mode event format 'application/cloudevents+avro'"
        )
        assert letter.value == b"\x00avro" and letter.raw_key == b"a1"


def _run(url: str, log: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    return subprocess.Popen(
        [sys.executable, "-m", "overture.cli", "run", "examples.orders:app", "--backend", url],
        cwd=REPO_ROOT,
        env={**env, "NO_COLOR": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _instances_for(client: ov.Client, ids: set[str], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not ids <= {i.trigger_id for i in client.instances()}:
        assert proc.poll() is None, "overture run exited"
        assert time.monotonic() < deadline, "the engine did not start the instances"
        time.sleep(0.1)


def test_overture_run_lives_through_a_long_key_and_its_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The issue as reported: ``overture run`` exited 1 on a ``LongSerializer`` key, and
    again on every restart. Now both runs go on serving."""
    url = kafka_url(kafka_bootstrap, partitions=2)
    order = {"order_id": "o1", "item": "book", "quantity": 1}
    log_path = tmp_path / "engine.log"
    with ov.Client(url) as client:
        broker = client.backend
        assert isinstance(broker, KafkaBackend)
        topic = broker.settings.events_topic
        p = producer(kafka_bootstrap)
        p.produce(topic, orjson.dumps(order), LONG_KEY, headers=binary("order.placed", "j1"))
        p.produce(topic, b"\xff junk", LONG_KEY, headers=[("x", b"\xfe")])
        p.flush(10)
        expected = {"j1"}
        for run in range(2):  # the second run reads the same records again: no crash
            with log_path.open("a") as log:
                proc = _run(url, log)
            try:
                good = {**order, "order_id": f"good{run}"}
                expected.add(client.send("order.placed", good, key=good["order_id"]))
                _instances_for(client, expected, proc)
                assert len(client.dead_letters()) == 1
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0, log_path.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert len(client.instances()) == 3
    assert "Traceback" not in log_path.read_text()
