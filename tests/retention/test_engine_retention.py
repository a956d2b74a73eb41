"""Retention on a virtual clock: finished instances disappear exactly when their
retention has passed, with everything of theirs; live ones (running, waiting, with
buffered events) never do."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

import overture as ov
from overture.testing import Harness

HOUR = 3600.0


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: int


def shop() -> ov.App:
    app = ov.App("shop")

    def check(order_id: str) -> str:
        return order_id

    @app.process(trigger=OrderPlaced, key="order_id", waits=[PaymentReceived])
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        await ctx.step(check, order.order_id)
        if order.order_id.startswith("sleepy"):
            await ctx.sleep(timedelta(days=10))  # a payment sent meanwhile is buffered
        if order.order_id.startswith("slow") or order.order_id.startswith("sleepy"):
            paid = await ctx.wait_for(PaymentReceived, timeout=timedelta(days=30))
            assert isinstance(paid, PaymentReceived)
        return "shipped"

    return app


Make = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    url = "memory://retain" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"

    @asynccontextmanager
    async def factory(retention: timedelta | None, **kw: object) -> AsyncIterator[Harness]:
        async with Harness(shop(), url, retention=retention, **kw) as h:  # type: ignore[arg-type]
            yield h

    return factory


def _rows_of(h: Harness, iid: str) -> dict[str, int]:
    """What the store holds of one instance, kind by kind (every table on SQLite)."""
    store = h.backend.store
    held = {
        "instance": int(store.instance(iid) is not None),
        "journal": len(store.journal(iid)),
        "waits": sum(w.instance_id == iid for w in store.waits()),
        "work": sum(w.instance_id == iid for w in store.work()),
    }
    url = h.url
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as c:
            for table, column in (
                ("instances", "id"),
                ("journal", "instance_id"),
                ("waits", "instance_id"),
                ("work", "instance_id"),
                ("inbox", "instance_id"),
            ):
                (n,) = c.execute(
                    f"SELECT count(*) FROM {table} WHERE {column} = ?", (iid,)
                ).fetchone()
                held[f"sql.{table}"] = n
            (n,) = c.execute(
                "SELECT count(*) FROM tasks WHERE id LIKE ?", (f"task:{iid}:%",)
            ).fetchone()
            held["sql.tasks"] = n
    return held


def _id(h: Harness, key: str) -> str:
    (row,) = [i for i in h.client.instances() if i.key == key]
    return row.id


async def test_a_finished_instance_is_kept_until_its_retention_then_wholly_deleted(
    make: Make,
) -> None:
    async with make(timedelta(hours=1)) as h:
        h.client.send(OrderPlaced(order_id="a"))
        await h.idle()
        iid = _id(h, "a")
        assert h.client.instance(iid).status == "completed"
        await h.advance(HOUR - 1)  # just before the retention: kept, journal and all
        held = _rows_of(h, iid)
        assert held["instance"] == 1 and held["journal"] > 0
        await h.advance(2)  # just after: gone
        assert all(n == 0 for n in _rows_of(h, iid).values()), _rows_of(h, iid)
        assert h.engine.stats["expired"] == 1
        with pytest.raises(ov.NotFound):
            h.client.instance(iid)


async def test_the_retention_counts_from_each_instance_s_finish(make: Make) -> None:
    async with make(timedelta(hours=1)) as h:
        h.client.send(OrderPlaced(order_id="first"))
        await h.idle()
        await h.advance(HOUR / 2)
        h.client.send(OrderPlaced(order_id="second"))
        await h.idle()
        first, second = _id(h, "first"), _id(h, "second")
        await h.advance(HOUR / 2 + 1)
        assert h.backend.store.instance(first) is None
        assert h.backend.store.instance(second) is not None
        await h.restart()  # the next pass is found again after a restart
        await h.advance(HOUR / 2)
        assert h.backend.store.instance(second) is None


async def test_live_instances_and_their_buffered_events_are_never_deleted(make: Make) -> None:
    async with make(timedelta(hours=1)) as h:
        h.client.send(OrderPlaced(order_id="slow"))  # waits for days
        h.client.send(OrderPlaced(order_id="sleepy"))  # sleeps 10 days, then waits
        await h.idle()
        h.client.send(PaymentReceived(order_id="sleepy", amount=3))  # buffered meanwhile
        await h.idle()
        slow, sleepy = _id(h, "slow"), _id(h, "sleepy")
        before = {iid: _rows_of(h, iid) for iid in (slow, sleepy)}
        for _ in range(9):
            await h.advance(24 * HOUR)
        assert {iid: _rows_of(h, iid) for iid in (slow, sleepy)} == before
        assert h.client.instance(slow).status == "waiting"
        await h.advance(24 * HOUR + 1)  # the sleep ends: the buffered payment is taken
        assert h.client.instance(sleepy).status == "completed"
        h.client.send(PaymentReceived(order_id="slow", amount=1))
        await h.idle()
        assert h.client.instance(slow).status == "completed"
        await h.advance(HOUR + 1)
        assert h.backend.store.instance(slow) is None
        assert h.backend.store.instance(sleepy) is None


async def test_retention_zero_deletes_on_finish_and_none_keeps_forever(make: Make) -> None:
    async with make(timedelta(0)) as h:
        h.client.send(OrderPlaced(order_id="a"))
        h.client.send(OrderPlaced(order_id="slow"))
        await h.idle()
        await h.advance(0.001)
        assert [i.key for i in h.client.instances()] == ["slow"]
    async with make(None) as h:
        h.client.send(OrderPlaced(order_id="b"))
        await h.idle()
        await h.advance(10_000 * 24 * HOUR)
        assert "b" in {i.key for i in h.client.instances()}


async def test_a_resent_trigger_of_a_deleted_instance_follows_the_documented_rule(
    make: Make,
) -> None:
    """The instance is gone, but the log still holds its trigger's record, so the log
    refuses the same event id again: nothing is resurrected (docs/retention.md)."""
    async with make(timedelta(hours=1)) as h:
        event = OrderPlaced(order_id="a")
        h.client.send(event)
        await h.idle()
        await h.advance(HOUR + 1)
        assert h.client.instances() == []
        h.client.send(event)
        await h.idle()
        assert h.client.instances() == []


async def test_deletion_goes_in_small_passes(make: Make) -> None:
    async with make(timedelta(hours=1)) as h:
        for n in range(450):
            h.client.send(OrderPlaced(order_id=f"o{n}"))
        await h.idle()
        batches = h.engine.stats["batches"]
        await h.advance(HOUR + 1)
        assert h.client.instances() == []
        assert h.engine.stats["expired"] == 450
        assert h.engine.stats["batches"] - batches >= 3  # 200 + 200 + 50


async def test_deletion_keeps_pace_with_completion_under_load(make: Make) -> None:
    """A load of 3,000 instances finishing in batches of up to 500: with retention 0 the
    passes delete them alongside (up to twice what finished since the previous pass), so
    deleting them all adds only a few batches to what the load itself takes, where passes
    of a fixed 200 would add one batch per 200 instances, 15."""

    async def batches(retention: timedelta | None) -> int:
        async with make(retention, batch_size=500) as h:
            for n in range(3000):
                h.client.send(OrderPlaced(order_id=f"o{n}"))
            await h.idle()
            assert h.engine.stats["finished"] == 3000
            assert h.engine.stats["expired"] == (0 if retention is None else 3000)
            return h.engine.stats["batches"]

    deleted = await batches(timedelta(0))  # first: it leaves nothing to the next engine
    kept = await batches(None)
    assert deleted - kept <= 5, (kept, deleted)
