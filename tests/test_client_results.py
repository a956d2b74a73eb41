"""Client results: ``start(event)`` names the instance, ``.result()`` is woken by the
commit that finishes it (no polling), on every backend; sync and async clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.backends import open_backend
from overture.ports import Backend
from overture.runtime.host import Host

from .conftest import REPO_ROOT as REPO
from .conftest import kafka_url


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int = 1


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str


def make_app() -> ov.App:
    app = ov.App("shop")

    async def check(order: OrderPlaced) -> int:
        return order.quantity

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> dict[str, Any]:
        quantity = await ctx.step(check, order)
        if quantity > 100:
            raise ValueError(f"too many: {quantity}")
        if quantity == 0:
            await ctx.wait_for(PaymentReceived, key=order.order_id)
        return {"order": order.order_id, "quantity": quantity}

    return app


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://results"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return kafka_url(request.getfixturevalue("kafka_bootstrap"))


@dataclass
class Running:
    backend: Backend
    client: ov.Client


@asynccontextmanager
async def Harness(app: ov.App, url: str, **_: object) -> AsyncIterator[Running]:
    """A live engine (as ``overture run`` runs it) and a sync client on one backend."""
    backend = open_backend(url)
    host = Host(app, backend)
    await host.start()
    client = ov.Client(backend, app=app)
    try:
        yield Running(backend, client)
    finally:
        await host.stop(grace=0)
        client.close()
        if not url.startswith("memory:"):
            backend.close()


def counting(store: Any) -> list[float]:
    """Record the time of every ``store.instance`` query (instrumenting the real store)."""
    calls: list[float] = []
    original: Callable[[str], Any] = store.instance

    def instance(instance_id: str) -> Any:
        calls.append(time.monotonic())
        return original(instance_id)

    store.instance = instance
    return calls


async def test_start_names_the_instance_and_result_returns_it(url: str) -> None:
    app = make_app()
    async with Harness(app, url) as h:
        client = ov.AsyncClient(h.backend, app=app)
        handle = await client.start(OrderPlaced(order_id="o1", quantity=3))
        assert await handle.result(timeout=60) == {"order": "o1", "quantity": 3}
        instance = await client.instance(handle.instance_id)
        assert instance.status == "completed" and instance.trigger_id == handle.event_id

        sync = h.client.start(OrderPlaced(order_id="o2", quantity=4))
        assert await asyncio.to_thread(sync.result, 60) == {"order": "o2", "quantity": 4}
        assert (await asyncio.to_thread(h.client.wait, sync.instance_id)).status == "completed"
        await client.close()


async def test_result_of_a_failed_instance_raises_its_error(url: str) -> None:
    app = make_app()
    async with Harness(app, url) as h:
        client = ov.AsyncClient(h.backend, app=app)
        handle = await client.start(OrderPlaced(order_id="bad", quantity=500))
        with pytest.raises(ov.InstanceFailed, match="ValueError: too many: 500") as caught:
            await handle.result(timeout=60)
        assert caught.value.status == "failed"
        assert caught.value.instance_id == handle.instance_id
        assert caught.value.error == {"type": "ValueError", "message": "too many: 500"}
        sync = h.client.start(OrderPlaced(order_id="bad2", quantity=501))
        with pytest.raises(ov.InstanceFailed, match="too many: 501"):
            await asyncio.to_thread(sync.result, 60)
        await client.close()


async def test_result_is_woken_by_the_commit_not_by_polling(url: str) -> None:
    app = make_app()
    async with Harness(app, url) as h:
        client = ov.AsyncClient(h.backend, app=app)
        handle = await client.start(OrderPlaced(order_id="w1", quantity=0))
        started = await client.start(OrderPlaced(order_id="w2", quantity=0))
        waiter = asyncio.create_task(handle.result(timeout=60))
        sync_waiter = asyncio.create_task(asyncio.to_thread(h.client.wait, started.instance_id))
        await asyncio.sleep(1.0)  # both wait for the payment; let any start-up settle
        calls = counting(h.backend.store)
        await asyncio.sleep(1.0)
        assert not waiter.done() and not sync_waiter.done()
        # a 10 ms poll would have read the store ~200 times in this second
        assert len(calls) <= 2, f"{len(calls)} store reads while nothing finished"
        sent = time.monotonic()
        await client.send(PaymentReceived(order_id="w1"))
        await client.send(PaymentReceived(order_id="w2"))
        assert await waiter == {"order": "w1", "quantity": 0}
        assert (await sync_waiter).status == "completed"
        assert calls and min(calls) >= sent  # read only once woken
        await client.close()


async def test_result_times_out_cleanly(url: str) -> None:
    app = make_app()
    async with Harness(app, url) as h:
        client = ov.AsyncClient(h.backend, app=app)
        handle = await client.start(OrderPlaced(order_id="t1", quantity=0))
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=f"instance {handle.instance_id} still"):
            await handle.result(timeout=0.3)
        assert time.monotonic() - began < 5
        sync = h.client.start(OrderPlaced(order_id="t2", quantity=0))
        with pytest.raises(TimeoutError, match="still"):
            await asyncio.to_thread(sync.result, 0.3)
        # the timed-out waits leave nothing behind: a later wait still works
        await client.send(PaymentReceived(order_id="t1"))
        assert await handle.result(timeout=60) == {"order": "t1", "quantity": 0}
        await client.close()


async def test_a_result_wait_that_ends_without_a_result_leaves_no_waiter(url: str) -> None:
    """A timed-out or cancelled ``await handle.result()`` forgets its waiter: nothing is
    kept for an instance nobody waits for any more."""
    app = make_app()
    async with Harness(app, url) as h:
        client = ov.AsyncClient(h.backend, app=app)
        handle = await client.start(OrderPlaced(order_id="c1", quantity=0))
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.2)
        task = asyncio.create_task(handle.result(timeout=60))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.sync._results._waiting == {}
        await client.close()


def test_start_needs_to_know_the_process(tmp_path: Path) -> None:
    with ov.Client(f"sqlite:///{tmp_path / 'x.db'}") as client:
        with pytest.raises(ov.ConfigError, match="start\\(\\) needs to know the processes"):
            client.start("order.placed", {"order_id": "o"})
        handle = client.start("order.placed", {"order_id": "o"}, process="fulfil")
        assert len(handle.instance_id) == 32
    with (
        ov.Client(f"sqlite:///{tmp_path / 'x.db'}", app=make_app()) as client,
        pytest.raises(ov.ConfigError, match="no process of app 'shop' starts on"),
    ):
        client.start("payment.received", {"order_id": "o"})


def test_start_refuses_a_process_the_app_does_not_start_on_the_event(tmp_path: Path) -> None:
    """With the app, ``process=`` naming a process the event does not start would give a
    handle for an instance that never exists: a clear error instead, nothing sent."""
    with ov.Client(f"sqlite:///{tmp_path / 'x.db'}", app=make_app()) as client:
        with pytest.raises(ov.ConfigError, match="'fulfil_typo'"):
            client.start(OrderPlaced(order_id="o"), process="fulfil_typo")
        assert client.events() == []


ENGINE = """
import asyncio, sys
from overture.backends import open_backend
from overture.runtime.host import Host
from tests.test_client_results import make_app

async def main() -> None:
    host = Host(make_app(), open_backend(sys.argv[1]))
    await host.start()
    print("ready", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_result_from_an_engine_in_another_process_rings_the_client(tmp_path: Path) -> None:
    """SQLite, engine and client in separate processes: the engine's commit rings the
    client's registered bell; the waiting client reads the store only when woken."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    open_backend(url).close()
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, url], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert engine.stdout is not None and engine.stdout.readline().strip() == "ready"
        with ov.Client(url, app=make_app()) as client:
            assert client.start(OrderPlaced(order_id="a", quantity=2)).result(60)["quantity"] == 2
            handle = client.start(OrderPlaced(order_id="b", quantity=0))
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(handle.result, 60)
                time.sleep(1.5)  # registered and acknowledged; the instance waits
                calls = counting(client.backend.store)
                time.sleep(1.0)
                assert not waiting.done()
                assert len(calls) == 0, f"{len(calls)} store reads while nothing finished"
                sent = time.monotonic()
                client.send(PaymentReceived(order_id="b"))
                assert waiting.result(60) == {"order": "b", "quantity": 0}
                woken = time.monotonic() - sent
            assert 1 <= len(calls) <= 2 and woken < 1.0
    finally:
        engine.kill()
        engine.wait()
        if engine.stdout is not None:
            engine.stdout.close()
