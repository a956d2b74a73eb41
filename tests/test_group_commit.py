"""Group commit of client sends: concurrent sends share transactions, each caller is
acknowledged only once its event is durable, and one bad send fails only its caller."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import overture as ov
from overture.backends import open_backend

from .conftest import kafka_url


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int = 1


def make_app() -> ov.App:
    app = ov.App("shop")

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        return order.order_id

    return app


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://sends"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return kafka_url(request.getfixturevalue("kafka_bootstrap"))


def transactions(db: Path) -> int:
    """How many transactions appended the log's records (one append stamps its records
    with one time)."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(DISTINCT ts) FROM log").fetchone()[0])


async def test_concurrent_async_sends_share_transactions(url: str) -> None:
    client = ov.AsyncClient(url, app=make_app())
    events = [OrderPlaced(order_id=f"o{i}") for i in range(200)]
    ids = await asyncio.gather(*(client.send(e) for e in events))
    assert ids == [e.envelope.id for e in events]
    committer = client.sync._sends
    assert committer.appends < len(events) / 4, committer.appends
    for event in events:
        assert client.backend.log.find_event(event.envelope.id) is not None
    await client.close()


def test_sync_sends_from_threads_share_transactions(tmp_path: Path) -> None:
    db = tmp_path / "test.db"
    barrier = threading.Barrier(8)
    with ov.Client(f"sqlite:///{db}", app=make_app()) as client:

        def sender(t: int) -> None:
            barrier.wait()
            for i in range(25):
                client.send(OrderPlaced(order_id=f"t{t}-{i}"))

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(client.events(type="order.placed")) == 200
    assert transactions(db) < 200 * 0.75, transactions(db)


async def test_an_invalid_event_fails_only_its_sender(url: str) -> None:
    client = ov.AsyncClient(url, app=make_app())
    good = [OrderPlaced(order_id=f"g{i}") for i in range(20)]

    async def bad() -> str:
        return await client.send("order.placed", {"order_id": "x", "quantity": "many"})

    sends = [client.send(e) for e in good[:10]] + [bad()] + [client.send(e) for e in good[10:]]
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(results[10], ov.EventValidationError)
    assert [r for i, r in enumerate(results) if i != 10] == [e.envelope.id for e in good]
    for event in good:
        assert client.backend.log.find_event(event.envelope.id) is not None
    await client.close()


async def test_a_record_the_log_refuses_fails_only_its_sender(tmp_path: Path) -> None:
    """A failure of the shared transaction itself (here SQLite refuses a value that is not
    bytes): the others' records are appended without it."""
    db = tmp_path / "test.db"
    client = ov.AsyncClient(f"sqlite:///{db}", app=make_app())
    good = [OrderPlaced(order_id=f"g{i}") for i in range(30)]
    sends = [client.send(e) for e in good[:15]]
    sends.append(client.send_raw({"not": "bytes"}, key="k"))  # type: ignore[arg-type]
    sends += [client.send(e) for e in good[15:]]
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(results[15], sqlite3.ProgrammingError)
    assert [r for i, r in enumerate(results) if i != 15] == [e.envelope.id for e in good]
    assert len(await client.events()) == 30
    await client.close()


SENDER = textwrap.dedent(
    """
    import asyncio, sys, time
    import overture as ov

    class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
        order_id: str

    async def main() -> None:
        client = ov.AsyncClient(sys.argv[1])

        async def one(i: int) -> None:
            event = OrderPlaced(order_id=f"o{i}")
            await client.send(event)
            print(event.envelope.id, flush=True)  # acknowledged: it must survive kill -9

        await asyncio.gather(*(one(i) for i in range(300)))
        print("all", flush=True)
        await asyncio.gather(*(one(i) for i in range(300, 100_000)))

    asyncio.run(main())
    """
)


def test_every_acknowledged_send_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "test.db"
    url = f"sqlite:///{db}"
    open_backend(url).close()  # create it before the sender starts
    proc = subprocess.Popen(
        [sys.executable, "-c", SENDER, url], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acked: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "all":
            break
        acked.append(line.strip())
    for _ in range(200):  # more acknowledged while it keeps sending, then kill mid-flight
        acked.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    broker = open_backend(url)
    try:
        missing = [i for i in acked if i and broker.log.find_event(i) is None]
    finally:
        broker.close()
    assert len(acked) >= 500 and not missing
    with sqlite3.connect(db) as conn:
        logged = int(conn.execute("SELECT count(*) FROM log").fetchone()[0])
    # every committed record counts (more were committed than the kill let us read acks of)
    assert logged >= len(acked)
    assert transactions(db) < logged / 4, (transactions(db), logged)


def test_one_callback_gets_each_sends_outcome_in_order(tmp_path: Path) -> None:
    """``submit_all(sends, done)`` (an AsyncClient's loop iteration): ``done`` is called
    once, after all of them, with each send's positions or its own error, in order."""
    from overture.groupcommit import GroupCommitter
    from overture.ports import NewRecord

    backend = open_backend(f"sqlite:///{tmp_path / 'test.db'}")
    committer = GroupCommitter(backend.log)
    calls: list[list[object]] = []
    called = threading.Event()

    def done(outcomes: list[object]) -> None:
        calls.append(outcomes)
        called.set()

    sends = [
        [NewRecord("a", b"1"), NewRecord("a", b"2")],
        [NewRecord("b", {"not": "bytes"})],  # type: ignore[arg-type]
        [NewRecord("c", b"3")],
    ]
    committer.submit_all(sends, done)
    assert called.wait(10)
    committer.close()
    assert len(calls) == 1
    first, second, third = calls[0]
    assert isinstance(first, list) and len(first) == 2
    assert isinstance(second, sqlite3.ProgrammingError)
    assert isinstance(third, list) and len(third) == 1
    assert [r.value for r in backend.log.read(0, 0, 10)] == [b"1", b"2", b"3"]
    backend.close()
