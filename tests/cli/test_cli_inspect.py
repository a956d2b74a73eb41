"""``events``, ``instances``, ``show`` and ``cancel`` against an engine driven in-process."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from cli_helpers import Invoke, failed, ok

import overture as ov
from overture.testing import Harness


@pytest.fixture
def url(sqlite_and_kafka_url: str) -> str:
    """These commands show the same on SQLite and Kafka."""
    return sqlite_and_kafka_url


async def test_events_lists_the_log_as_table_and_json(
    invoke: Invoke, url: str, orders: ModuleType
) -> None:
    async with Harness(orders.app, url) as h:
        placed = h.client.send(orders.OrderPlaced(order_id="o1", item="unicorn", quantity=1))
        h.client.send_raw(b"\x00 not a cloud event")
        await h.idle()

    table = ok(invoke("events"))
    assert placed in table and "order.placed" in table and "order.out_of_stock" in table
    assert "<undecodable>" in table

    rows = [json.loads(line) for line in ok(invoke("events", "--json")).splitlines()]
    assert [(r["partition"], r["offset"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
    first = rows[0]
    assert (first["specversion"], first["id"], first["type"]) == ("1.0", placed, "order.placed")
    assert first["data"] == {"order_id": "o1", "item": "unicorn", "quantity": 1}
    assert rows[1]["raw"] == "\x00 not a cloud event" and "not JSON" in rows[1]["error"]
    assert rows[2]["type"] == "order.out_of_stock" and rows[2]["partitionkey"] == "o1"

    only = ok(invoke("events", "--type", "order.out_of_stock", "--json")).splitlines()
    assert [json.loads(line)["type"] for line in only] == ["order.out_of_stock"]
    assert len(ok(invoke("events", "--json", "--limit", "2")).splitlines()) == 2


def test_events_follow_stops_after_limit(invoke: Invoke, url: str) -> None:
    with ov.Client(url) as client:
        client.send("a", {"n": 1})
        client.send("b", {"n": 2})
        client.send_raw(b"{broken")
    out = ok(invoke("events", "--follow", "--limit", "3"))
    lines = out.splitlines()
    assert len(lines) == 3
    assert " a " in lines[0] and " b " in lines[1] and "<undecodable>" in lines[2]
    typed = ok(invoke("events", "--follow", "--limit", "1", "--json", "--type", "b"))
    assert json.loads(typed)["data"] == {"n": 2}


async def test_instances_and_show(invoke: Invoke, url: str, orders: ModuleType) -> None:
    async with Harness(orders.app, url) as h:
        paid = h.client.send(orders.OrderPlaced(order_id="o1", item="book", quantity=1))
        h.client.send(orders.OrderPlaced(order_id="o2", item="unicorn", quantity=1))
        h.client.send(orders.OrderPlaced(order_id="o3", item="lamp", quantity=1))
        await h.idle()
        h.client.send(orders.PaymentReceived(order_id="o1", amount=9.5))
        await h.idle()

    rows = [json.loads(line) for line in ok(invoke("instances", "--json")).splitlines()]
    by_key = {r["key"]: r for r in rows}
    assert {k: (r["status"], r["result"]) for k, r in by_key.items()} == {
        "o1": ("completed", "shipped"),
        "o2": ("completed", "out_of_stock"),
        "o3": ("waiting", None),
    }
    assert by_key["o1"]["trigger_id"] == paid and by_key["o1"]["process"] == "fulfil_order"

    table = ok(invoke("instances"))
    assert all(r["id"] in table for r in rows) and "out_of_stock" in table

    waiting = ok(invoke("instances", "--status", "waiting", "--json")).splitlines()
    assert [json.loads(line)["key"] for line in waiting] == ["o3"]
    assert ok(invoke("instances", "--process", "nope", "--json")) == ""
    assert "invalid --status 'bogus'" in failed(invoke("instances", "--status", "bogus"), code=2)

    o1 = by_key["o1"]["id"]
    shown = ok(invoke("show", o1[-8:]))  # a unique suffix (or prefix) is enough
    for expected in (
        o1,
        "fulfil_order v1",
        "started by order.placed",
        "step check_inventory returned true",
        'step reserve returned "res-o1"',
        "waiting for payment.received with key 'o1'",
        "received payment.received",
        "emitted order.shipped",
        'completed with result "shipped"',
    ):
        assert expected in shown, expected

    dumped = json.loads(ok(invoke("show", o1, "--json")))
    assert dumped["instance"]["result"] == "shipped"
    assert dumped["journal"][0]["k"] == "start"
    assert dumped["journal"][-1] == {**dumped["journal"][-1], "k": "end", "st": "completed"}


def test_show_unknown_instance(invoke: Invoke, url: str) -> None:
    with ov.Client(url):
        pass  # creates the (empty) database
    assert failed(invoke("show", "0123456789abcdef")) == "error: no instance '0123456789abcdef'"


def test_reading_commands_refuse_a_missing_database(invoke: Invoke) -> None:
    if invoke.url.startswith("kafka:"):
        pytest.skip("an embedded-database check")
    for command in (["events"], ["instances"], ["show", "x"], ["cancel", "x"], ["dlq", "list"]):
        assert "no Overture database" in failed(invoke(*command))


async def test_cancel(invoke: Invoke, url: str, orders: ModuleType) -> None:
    async with Harness(orders.app, url) as h:
        h.client.send(orders.OrderPlaced(order_id="o9", item="lamp", quantity=1))
        h.client.send(orders.OrderPlaced(order_id="o10", item="unicorn", quantity=1))
        await h.idle()
        waiting, done = (h.client.instances(status=s)[0] for s in ("waiting", "completed"))

        out = ok(invoke("cancel", waiting.id))
        assert f"cancellation of instance {waiting.id}" in out and "key o9" in out
        await h.idle()
        assert h.client.instance(waiting.id).status == "cancelled"
        assert ok(invoke("show", waiting.id)).rstrip().endswith("cancelled")

        assert "is already cancelled" in failed(invoke("cancel", waiting.id))
        assert "is already completed" in failed(invoke("cancel", done.id))
        assert "no instance" in failed(invoke("cancel", "nope"))
