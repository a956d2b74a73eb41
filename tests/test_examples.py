"""``examples/orders.py`` under the harness, on every backend, with virtual time."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import overture as ov
from overture.testing import Harness

REPO_ROOT = Path(__file__).resolve().parents[1]
Factory = Callable[..., AbstractAsyncContextManager[Harness]]
"""The ``harness`` fixture of ``tests/conftest.py`` (every backend, with and without the
instance cache)."""


@pytest.fixture
def orders(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("examples.orders")


def steps(client: ov.Client, instance_id: str) -> list[str]:
    """Names of the steps the instance ran, in journal order."""
    return [e["n"] for e in client.journal(instance_id) if e["k"] == "cmd" and e["op"] == "step"]


def emitted(client: ov.Client, event_type: str) -> list[dict[str, Any]]:
    return [e.envelope.data for e in client.events(type=event_type) if e.envelope is not None]


async def test_paid_order_ships_and_notifies(
    harness: Factory, orders: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=orders.log.name)
    async with harness(orders.app) as h:
        h.client.send(orders.OrderPlaced(order_id="o1", item="book", quantity=2))
        await h.idle()
        [instance] = h.client.instances()
        assert instance.status == "waiting"
        h.client.send(orders.PaymentReceived(order_id="o1", amount=25.0))
        await h.idle()

        done = h.client.instance(instance.id)
        assert (done.status, done.result, done.key) == ("completed", "shipped", "o1")
        assert steps(h.client, done.id) == ["check_inventory", "reserve", "ship"]
        assert emitted(h.client, "order.shipped") == [{"order_id": "o1", "tracking": "TRK-o1"}]
        assert h.client.dead_letters() == []
    assert "notification: order o1 shipped, tracking TRK-o1" in caplog.messages


async def test_out_of_stock(harness: Factory, orders: ModuleType) -> None:
    async with harness(orders.app) as h:
        h.client.send(orders.OrderPlaced(order_id="o2", item="unicorn", quantity=1))
        await h.idle()
        [instance] = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "out_of_stock")
        assert steps(h.client, instance.id) == ["check_inventory"]
        assert emitted(h.client, "order.out_of_stock") == [{"order_id": "o2", "item": "unicorn"}]
        assert emitted(h.client, "order.shipped") == []


async def test_unpaid_order_is_cancelled_after_the_timeout_and_compensated(
    harness: Factory, orders: ModuleType
) -> None:
    async with harness(orders.app) as h:
        h.client.send(orders.OrderPlaced(order_id="o3", item="lamp", quantity=1))
        await h.idle()
        await h.advance(29 * 60)
        [instance] = h.client.instances()
        assert instance.status == "waiting"  # 29 minutes: still within the 30 allowed

        await h.advance(60)
        done = h.client.instance(instance.id)
        assert (done.status, done.result) == ("completed", "cancelled")
        assert steps(h.client, done.id) == ["check_inventory", "reserve", "compensate:release"]
        release = next(e for e in h.client.journal(done.id) if e["k"] == "res" and e["s"] == 4)
        assert "ok" in release  # the compensation step succeeded
        assert emitted(h.client, "order.cancelled") == [
            {"order_id": "o3", "reason": "payment timeout"}
        ]

        # A payment that arrives too late changes nothing.
        h.client.send(orders.PaymentReceived(order_id="o3", amount=5.0))
        await h.idle()
        assert h.client.instance(done.id).result == "cancelled"
        assert emitted(h.client, "order.shipped") == []


async def test_make_app_sets_the_payment_timeout(harness: Factory, orders: ModuleType) -> None:
    async with harness(orders.make_app(payment_timeout=timedelta(seconds=5))) as h:
        h.client.send(orders.OrderPlaced(order_id="o4", item="book", quantity=1))
        await h.idle()
        await h.advance(5)
        [instance] = h.client.instances()
        assert instance.result == "cancelled"


async def test_payments_only_reach_their_own_order(harness: Factory, orders: ModuleType) -> None:
    async with harness(orders.app) as h:
        for order_id in ("a", "b"):
            h.client.send(orders.OrderPlaced(order_id=order_id, item="book", quantity=1))
        await h.idle()
        h.client.send(orders.PaymentReceived(order_id="b", amount=1.0))
        await h.idle()
        status = {i.key: i.status for i in h.client.instances()}
        assert status == {"a": "waiting", "b": "completed"}
