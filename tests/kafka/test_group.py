"""The Kafka backend against a real broker: the wire format, re-keying, topics, the group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import overture as ov
from overture.backends import open_backend
from overture.backends.kafka import group
from overture.backends.kafka.backend import KafkaBackend
from overture.errors import BrokerUnavailable, ConfigError
from overture.ports import partition_for
from overture.runtime.host import Host
from overture.runtime.observer import Observer
from overture.testing import Harness

from ..conftest import kafka_url


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: int


def make_app() -> ov.App:
    app = ov.App("shop")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> int:
        paid = await ctx.wait_for(PaymentReceived, key=order.order_id)
        return paid.amount

    return app


def binary_record(
    event_type: str, event_id: str, data: dict[str, object], key: str
) -> dict[str, object]:
    """A CloudEvents binary-mode record as any Kafka client would write it."""
    return {
        "key": key.encode(),
        "value": orjson.dumps(data),
        "headers": [
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_source", b"/external/producer"),
            ("ce_type", event_type.encode()),
            ("content-type", b"application/json"),
        ],
    }


async def test_plain_producer_starts_and_feeds_processes_with_rekeying(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=4)
    app = make_app()
    async with Harness(app, url) as h:
        broker = h.backend
        assert isinstance(broker, KafkaBackend)
        topic = broker.settings.events_topic
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        # keyed by the order: librdkafka's default partitioner agrees with Overture's
        producer.produce(topic, **binary_record("order.placed", "e1", {"order_id": "o1"}, "o1"))
        producer.flush(10)
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "waiting" and instance.key == "o1"

        # keyed by the payment id and on another partition, with the correlation key in
        # the partitionkey header: the engine of that partition forwards it to o1's
        home = partition_for("o1", 4)
        record = binary_record("payment.received", "e2", {"order_id": "o1", "amount": 42}, "pay-9")
        headers = [*record["headers"], ("ce_partitionkey", b"o1")]  # type: ignore[misc]
        producer.produce(
            topic, record["value"], record["key"], partition=(home + 1) % 4, headers=headers
        )
        producer.flush(10)
        await h.idle()
        done = h.client.instance(instance.id)
        assert (done.status, done.result) == ("completed", 42)
        assert sum(e.stats["rekeyed"] for e in h.host.engines.values()) == 1

        # the forwarded copy went through the internal topic to o1's partition, exactly as
        # it arrived (key, headers, value), so a dead letter made there keeps those bytes
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": "check",
                "isolation.level": "read_committed",
            }
        )
        consumer.assign([TopicPartition(broker.settings.internal_topic, home, 0)])
        message = consumer.poll(10)
        consumer.close()
        assert message is not None and message.error() is None
        assert message.key() == b"pay-9" and message.value() == record["value"]
        assert message.headers() == headers


async def test_emitted_events_are_cloudevents_in_binary_mode(kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap, partitions=2)
    app = ov.App("emit")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        ctx.emit("went", {"n": 1}, key="k7")

    async with Harness(app, url) as h:
        h.client.send("go", {}, key="k7")
        await h.idle()
        broker = h.backend
        assert isinstance(broker, KafkaBackend)
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": "check",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.assign([TopicPartition(broker.settings.events_topic, partition_for("k7", 2), 0)])
        seen = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                headers = dict(message.headers() or [])
                seen[headers["ce_type"]] = (message.key(), headers, message.value())
        consumer.close()
        key, headers, value = seen[b"went"]
        assert key == b"k7"
        assert orjson.loads(value) == {"n": 1}
        assert headers["ce_specversion"] == b"1.0"
        assert headers["content-type"] == b"application/json"
        assert headers["ce_source"].startswith(b"/emit/proc/")


def test_topics_are_created_and_a_different_partition_count_is_refused(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=3)
    broker = open_backend(url)
    assert broker.log.partitions == 3
    broker.close()
    again = open_backend(url.replace("?partitions=3", ""))
    assert again.log.partitions == 3  # an existing namespace keeps its count
    again.close()
    with pytest.raises(ConfigError, match="have 3 partitions but 5 were asked for"):
        open_backend(url.replace("?partitions=3", "?partitions=5"))


def test_an_unreachable_broker_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:9 did not answer"):
        open_backend("kafka://127.0.0.1:9/nowhere")
    assert time.monotonic() - started < 30


class Owned(Observer):
    """Follows the partitions a host owns from the rebalances it reports."""

    def __init__(self) -> None:
        self.owned: set[int] = set()
        self.revoked: set[int] = set()

    def rebalance(self, assigned: Sequence[int], revoked: Sequence[int]) -> None:
        assert not (set(assigned) & self.owned), "assigned a partition it already owned"
        self.owned |= set(assigned)
        self.owned -= set(revoked)
        self.revoked |= set(revoked)


async def test_a_rebalance_moves_waiting_instances_to_the_other_member(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=4)
    app = make_app()
    first_seen, second_seen = Owned(), Owned()
    first = Host(app, open_backend(url), observer=first_seen)
    second = Host(app, open_backend(url), observer=second_seen)
    client = ov.Client(url, app=app)
    try:
        await first.start()
        await second.start()
        deadline = time.monotonic() + 30
        while (
            len(first.engines) + len(second.engines) < 4 or not first.engines or not second.engines
        ):
            assert time.monotonic() < deadline, "the group never shared the partitions"
            await asyncio.sleep(0.1)
        orders = [f"o{i}" for i in range(20)]
        for order in orders:
            client.send(OrderPlaced(order_id=order))
        while len(client.instances(status="waiting")) < len(orders):
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.1)

        await first.stop()  # its partitions, with their waiting instances, move over
        deadline = time.monotonic() + 30
        while len(second.engines) < 4:
            assert time.monotonic() < deadline, "the survivor never took the partitions"
            await asyncio.sleep(0.1)
        for n, order in enumerate(orders):
            client.send(PaymentReceived(order_id=order, amount=n))
        deadline = time.monotonic() + 30
        while len(client.instances(status="completed")) < len(orders):
            assert time.monotonic() < deadline, "waits did not move with their partitions"
            await asyncio.sleep(0.1)
        results = {i.key: i.result for i in client.instances()}
        assert results == {order: n for n, order in enumerate(orders)}
        # the observers followed it: the survivor was assigned what the first gave up
        assert second_seen.owned == set(second.engines) == {0, 1, 2, 3}
        assert first_seen.revoked
    finally:
        await first.stop()
        await second.stop()
        client.close()


async def test_idle_waits_until_the_changelog_is_visible_to_readers(
    kafka_bootstrap: str,
) -> None:
    """A transaction reports its commit before the cluster has written its markers; until
    then a client's view (which reads to the last stable offset) would miss the engines'
    last commit. ``Harness.idle`` must not return in that window: here a transaction on an
    owned changelog partition is held open, and caught_up() stays false until it commits."""
    url = kafka_url(kafka_bootstrap)
    async with Harness(make_app(), url) as h:
        h.client.send(OrderPlaced(order_id="o1"))
        await h.idle()
        membership = h.host._membership
        assert membership is not None and await asyncio.to_thread(membership.caught_up)
        backend = h.backend
        assert isinstance(backend, KafkaBackend)
        settings = backend.settings
        producer = Producer(settings.config(**{"transactional.id": f"{url}-held"}))
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(settings.changelog_topic, b"{}", b'["zz"]', partition=0)
        producer.flush(10)
        assert not await asyncio.to_thread(membership.caught_up)
        producer.abort_transaction(30)
        for _ in range(100):  # the abort marker lands a moment later
            if await asyncio.to_thread(membership.caught_up):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("caught_up() stayed false after the transaction ended")


def test_a_partition_paused_by_backpressure_is_fetched_again_when_reassigned(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka keeps a partition paused across a rebalance that assigns it to the same
    member again: the fetcher resumes every partition it is assigned, or a member whose
    backlog had paused a partition would never read it again once another member joins
    (seen with two engines draining a backlog: ``benchmarks/streams_kafka.py
    --processes 2``)."""
    monkeypatch.setattr(group, "PAUSE_AT", 5)  # a backlog of 20 records pauses a partition
    url = kafka_url(kafka_bootstrap, partitions=2)
    with ov.Client(url) as client:
        for i in range(40):
            client.send(ov.Event.of("tick", {"n": i}, key=f"k{i}"))
    counts = {p: sum(partition_for(f"k{i}", 2) == p for i in range(40)) for p in (0, 1)}
    assert all(counts.values())
    nothing: Callable[..., None] = lambda *args: None  # noqa: E731  # no engines: nothing drains
    first_backend, second_backend = open_backend(url), open_backend(url)
    assert isinstance(first_backend, KafkaBackend) and isinstance(second_backend, KafkaBackend)
    first = first_backend.claim("test", nothing, nothing, nothing)
    second = None
    try:
        deadline = time.monotonic() + 30
        while any(len(first.read(p, 0, 100)) < counts[p] for p in (0, 1)):
            assert time.monotonic() < deadline, "the first member never fetched its backlog"
            time.sleep(0.1)
        second = second_backend.claim("test", nothing, nothing, nothing)  # a rebalance
        while not (len(first.assigned) == 1 and len(second.assigned) == 1):
            assert time.monotonic() < deadline + 30, "the group never shared the partitions"
            time.sleep(0.1)
        (kept,) = first.assigned
        # nothing was committed: the kept partition is read again from its beginning
        while len(first.read(kept, 0, 100)) < counts[kept]:
            assert time.monotonic() < deadline + 60, f"partition {kept} stayed paused"
            time.sleep(0.1)
        assert [r.offset for r in first.read(kept, 0, 100)] == list(range(counts[kept]))
    finally:
        first.close()
        if second is not None:
            second.close()
