"""Inputs that are wrong or repeated: never a crash, never a duplicate (issue 9, section 1).

Each test runs on every backend; a restart after the input shows that nothing was left
behind that would trip the engine again.
"""

from __future__ import annotations

import orjson
import pytest

import overture as ov
from overture.core import machine as m
from overture.events import Envelope, encode

from .conftest import Factory


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str


def order_app() -> tuple[ov.App, list[str]]:
    app = ov.App("shop")
    effects: list[str] = []

    async def charge(order_id: str) -> str:
        effects.append(order_id)
        return "ok"

    @app.process(trigger=OrderPlaced, key="order_id")
    async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str:
        return await ctx.step(charge, order.order_id)

    return app, effects


# -- one instance per trigger, whatever the producer ----------------------------------------

TIMELESS = orjson.dumps(
    {
        "specversion": "1.0",
        "id": "evt-no-time",
        "source": "/their/producer",
        "type": "order.placed",
        "data": {"order_id": "o1"},
    }
)
"""A CloudEvent without the optional ``time`` attribute, as another producer may write it."""


async def test_identical_bytes_without_time_start_one_instance(harness: Factory) -> None:
    app, effects = order_app()
    async with harness(app) as h:
        h.client.send_raw(TIMELESS, key="o1")
        await h.idle()
        h.client.send_raw(TIMELESS, key="o1")  # the producer's retry, in a later batch
        await h.idle()
        await h.restart()
        h.client.send_raw(TIMELESS, key="o1")  # and once more after a restart
        await h.idle()
        assert [i.status for i in h.client.instances()] == ["completed"]
        assert effects == ["o1"]


async def test_a_retry_with_a_new_time_is_the_same_trigger(harness: Factory) -> None:
    """CloudEvents identity is source + id: an SDK that stamps ``time`` anew on a retry
    sends the same event."""
    app, effects = order_app()
    async with harness(app) as h:
        first = Envelope(type="order.placed", data={"order_id": "o1"}, id="e1", source="/p")
        h.client.send_raw(encode(first), key="o1")
        await h.idle()
        retry = Envelope(type="order.placed", data={"order_id": "o1"}, id="e1", source="/p")
        h.client.send_raw(encode(retry), key="o1")
        await h.idle()
        assert len(h.client.instances()) == 1
        assert effects == ["o1"]


async def test_an_instance_with_the_legacy_id_is_found_when_its_trigger_returns(
    harness: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances started by releases whose ids also hashed the trigger's time keep those
    ids; re-delivering their trigger must not start a second instance."""
    app, effects = order_app()
    trigger = Envelope(type="order.placed", data={"order_id": "o1"}, id="old-1", source="/p")
    legacy = m.legacy_instance_id_for("fulfil", trigger)
    assert legacy != m.instance_id_for("fulfil", trigger)
    async with harness(app) as h:
        # start the instance as an old release did, then restart on today's code
        with monkeypatch.context() as old_release:
            old_release.setattr(m, "instance_id_for", m.legacy_instance_id_for)
            h.client.send_raw(encode(trigger), key="o1")
            await h.idle()
        assert [i.id for i in h.client.instances()] == [legacy]
        await h.restart()
        h.client.send_raw(encode(trigger), key="o1")
        await h.idle()
        assert [i.id for i in h.client.instances()] == [legacy]
        assert effects == ["o1"]
