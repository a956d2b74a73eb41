"""The codec door: every event passes through one ``Codec``, replay of old journals too."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import overture as ov
from overture.codec import Codec
from overture.core import machine as m
from overture.events import Envelope, Event
from overture.testing import Harness

from .conftest import Factory
from .core.test_machine import GOLDEN, SPEC

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "overture"
E = TypeVar("E", bound=Event)


def test_no_module_but_the_codec_encodes_or_decodes_events() -> None:
    """Free ``encode``/``decode`` calls (and ``App.decode``-like doors) would bypass what
    plugs into the codec: only codec.py and events.py (which defines them) may have them."""
    call = re.compile(r"""(?<!\w)(?:encode|decode)\((?!\)|["']|errors=)""")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("codec.py", "events.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if call.search(line)
    ]
    assert found == []


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    quantity: int


class PaymentReceived(ov.Event, type="payment.received", key="order_id"):
    order_id: str
    amount: float


class Counting(Codec):
    """A codec that counts what it makes typed and upcasts version-1 data: an order's
    ``qty`` became ``quantity``, a payment's ``cents`` became ``amount``."""

    def __init__(self, app: ov.App) -> None:
        super().__init__(app)
        self.typed_calls: list[str] = []
        self.journal_calls: list[str] = []

    def typed(self, envelope: Envelope, cls: type[E]) -> E:
        self.typed_calls.append(envelope.type)
        data = dict(envelope.data or {})
        if "qty" in data:
            data["quantity"] = data.pop("qty")
        if "cents" in data:
            data["amount"] = data.pop("cents") / 100
        return super().typed(envelope.with_data(data), cls)

    def from_journal(self, structured: Any, cls: type[E]) -> E:
        self.journal_calls.append(structured["type"])
        return super().from_journal(structured, cls)


def _app(seen: list[Any]) -> ov.App:
    app = ov.App("codec")

    @app.process(trigger=OrderPlaced, key="order_id", waits=[PaymentReceived])
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> float:
        paid = await ctx.wait_for(PaymentReceived)
        await ctx.sleep(timedelta(seconds=10))
        seen.append((order.quantity, paid.amount))
        return order.quantity * paid.amount

    return app


async def test_replaying_an_old_journal_goes_through_the_codec(tmp_path: Path) -> None:
    """A journal written by one engine (with version-1 data, which that engine's codec
    accepted as it was) is replayed by a later engine: its trigger and its waited-for
    event pass through the later engine's codec, which upcasts them."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    seen: list[Any] = []

    class Lenient(ov.Event, type="order.placed", key="order_id"):
        order_id: str

    class LenientPayment(ov.Event, type="payment.received", key="order_id"):
        order_id: str

    old = ov.App("codec")

    @old.process(trigger=Lenient, key="order_id", name="fulfil", waits=[LenientPayment])
    async def fulfil_v1(ctx: ov.Context, order: Lenient) -> float:
        await ctx.wait_for(LenientPayment)
        await ctx.sleep(timedelta(seconds=10))
        return 0.0

    async with Harness(old, url) as h:
        h.client.send("order.placed", {"order_id": "o1", "qty": 3})
        await h.idle()
        h.client.send("payment.received", {"order_id": "o1", "cents": 250})
        await h.idle()
        assert [e["k"] for e in h.client.journal(h.client.instances()[0].id)][-1] == "cmd"

    app = _app(seen)
    codec = Counting(app)
    async with Harness(app, url, cache_size=0, codec=codec) as h:
        await h.advance(10)
        (instance,) = h.client.instances()
        assert instance.status == "completed", instance.error
        assert instance.result == 7.5
    assert seen == [(3, 2.5)]
    # the trigger and the payment, each read from the old journal by the new codec
    assert codec.journal_calls == ["order.placed", "payment.received"]
    assert codec.typed_calls == ["order.placed", "payment.received"]


async def test_every_path_of_an_engine_uses_its_codec(harness: Factory) -> None:
    """Live events too: the trigger and the waited-for event are made typed by the codec
    (upcast here), on every backend, with and without the cache."""
    seen: list[Any] = []
    app = _app(seen)
    codec = Counting(app)
    async with harness(app, codec=codec) as h:
        h.client.send("order.placed", {"order_id": "o2", "qty": 2})
        await h.idle()
        h.client.send("payment.received", {"order_id": "o2", "cents": 100})
        await h.advance(10)
        (instance,) = h.client.instances()
        assert instance.status == "completed", instance.error
        assert instance.result == 2.0
    assert seen[-1] == (2, 1.0)
    assert {"order.placed", "payment.received"} <= set(codec.typed_calls)


def test_a_client_validates_through_its_codec() -> None:
    app = _app([])
    codec = Counting(app)
    with ov.Client("memory://codec-client", app=app, codec=codec) as client:
        client.send("order.placed", {"order_id": "o3", "qty": 1})  # upcast, then valid
        with pytest.raises(ov.EventValidationError):
            client.send("order.placed", {"order_id": "o3"})
    assert codec.typed_calls == ["order.placed", "order.placed"]


def test_the_first_releases_golden_journal_replays_through_the_machines_codec() -> None:
    """The golden journal of format 1 (tests/core/golden): its trigger and the event its
    wait received are made typed events by the codec the machine was given."""
    journal = json.loads((GOLDEN / "order_shipped_v1.json").read_text())
    codec = Counting(ov.App("golden"))
    replayed = m.Machine(SPEC, "golden", "o1", codec=codec)
    assert replayed.replay(journal) == []
    assert (replayed.status, replayed.result) == ("completed", "shipped")
    assert codec.journal_calls == ["order.placed", "payment.received"]


class Registry(Codec):
    """A schema-registry-like codec: events of some types need an integer ``v``, which no
    contract in the app says."""

    def typed(self, envelope: Envelope, cls: type[E]) -> E:
        if envelope.type in ("audit", "click", "approval"):
            data = envelope.data
            if not isinstance(data, dict) or not isinstance(data.get("v"), int):
                raise ov.EventValidationError(f"registry: {envelope.type} needs an integer 'v'")
        return super().typed(envelope, cls)


async def test_a_codec_refuses_events_of_types_no_process_starts(harness: Factory) -> None:
    """The engine skips making typed events of contract-less types that start nothing
    only with the stock codec: a codec of its own sees every event, and what it refuses
    is dead-lettered before a wait, a handler or a window gets it."""
    app = ov.App("registry")
    audited: list[Any] = []
    closed: list[Any] = []

    @app.on("audit")
    async def audit(event: ov.Event) -> None:
        audited.append(event.data)

    @app.window(
        source="click", key="user", window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"n": ov.Count()}, idle=None,
    )  # fmt: skip
    def clicks(result: ov.WindowResult) -> None:
        closed.append(result)

    @app.process(trigger="order", key="id", waits=["approval"])
    async def order(ctx: ov.Context, event: ov.Event) -> str:
        approval = await ctx.wait_for("approval")
        return str(approval.data)

    async with harness(app, codec=Registry(app)) as h:
        h.client.send("order", {"id": "o1"}, key="o1")
        await h.idle()
        h.client.send("approval", {"v": "bad"}, key="o1")
        h.client.send("audit", {"v": "not an int"}, key="a")
        h.client.send("click", {"user": "u", "v": "bad"}, key="u")
        await h.idle()
        letters = h.client.dead_letters()
        assert sorted(d.event_type for d in letters) == ["approval", "audit", "click"]
        assert all(d.source == "validate" and "registry" in d.reason for d in letters)
        (instance,) = h.client.instances()
        assert instance.status == "waiting"  # the refused approval never reached it
        assert audited == [] and h.client.window("clicks", "u") == []
        h.client.send("approval", {"v": 1}, key="o1")
        await h.idle()
        assert h.client.instance(instance.id).status == "completed"
