"""Non-determinism parks instances as stuck; cancel; engine restart mid-flight."""

from __future__ import annotations

from datetime import timedelta

import overture as ov
from overture.ports import partition_for

from .conftest import Factory


def build(changed: bool) -> ov.App:
    app = ov.App("det")

    async def a() -> str:
        return "a"

    async def b() -> str:
        return "b"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        await ctx.step(b if changed else a)
        await ctx.wait_for("continue")
        return "done"

    return app


async def test_diverging_replay_parks_the_instance_as_stuck(harness: Factory) -> None:
    async with harness(build(changed=False)) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        journal_before = h.client.journal(instance.id)
    async with harness(build(changed=True)) as h:  # new code, same journal
        h.client.send("continue", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "stuck"
        message = instance.error["message"]
        assert "requested '#1 step" in message and ".b'" in message
        assert "recorded '#1 step" in message and ".a'" in message
        assert h.client.journal(instance.id) == journal_before  # nothing corrupted
    async with harness(build(changed=False)) as h:  # the fix: original code again
        await h.idle()
        assert h.client.instances()[0].status == "stuck"  # parked until an input arrives
        h.client.send("continue", {}, key="k")  # the wait was kept while parked
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "done")


async def test_awaiting_a_foreign_awaitable_parks_the_instance(harness: Factory) -> None:
    import asyncio

    app = ov.App("bad-await")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        await asyncio.sleep(0.01)

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "stuck"
        assert "only ctx operations may be awaited" in instance.error["message"]


async def test_cancel_compensates_and_stops_a_waiting_instance(harness: Factory) -> None:
    app = ov.App("cancel")
    undone: list[str] = []

    async def release(key: str) -> None:
        undone.append(key)

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        ctx.compensate_with(release, event.key)
        await ctx.wait_for("continue", timeout=timedelta(hours=1))
        return "done"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        h.client.send("go", {}, key="other")
        await h.idle()
        target = next(i for i in h.client.instances() if i.key == "k")
        h.client.cancel(target.id[-8:])
        await h.idle()
        h.client.send("continue", {}, key="k")
        h.client.send("continue", {}, key="other")
        await h.advance(7200)
        status = {i.key: i.status for i in h.client.instances()}
        assert status == {"k": "cancelled", "other": "completed"}
        kinds = [e["k"] for e in h.client.journal(target.id)]
        assert kinds[-4:] == ["cancel", "cmd", "res", "end"]  # compensation, then the end
        assert h.client.journal(target.id)[-1]["st"] == "cancelled"
        assert undone == ["k"]


async def test_restart_mid_flight_finishes_everything_exactly_once(harness: Factory) -> None:
    app = ov.App("restart")
    effects: list[str] = []

    async def effect(name: str) -> str:
        effects.append(name)
        return name

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        await ctx.step(effect, f"{event.key}-1")
        await ctx.sleep(timedelta(seconds=1))
        await ctx.step(effect, f"{event.key}-2")
        ctx.emit("went", {"k": event.key})
        return "ok"

    async with harness(app) as h:
        for i in range(20):
            h.client.send("go", {}, key=f"k{i}")
        await h.idle()
        await h.restart()
        await h.advance(1)
        assert all(i.status == "completed" for i in h.client.instances())
        assert sorted(effects) == sorted(f"k{i}-{n}" for i in range(20) for n in (1, 2))
        assert len(h.client.events(type="went")) == 20


class Placed(ov.Event, type="cancel.placed", key="order_id"):
    order_id: str


async def test_cancel_reaches_an_instance_living_off_its_keys_partition(
    harness: Factory,
) -> None:
    """A keyless trigger starts an instance (keyed by the process) on the partition the
    trigger arrived on, which need not be its key's: the cancellation must go there, or
    on Kafka the engine of the key's partition receives it and cannot find the instance."""
    app = ov.App("cancel-off-key")

    @app.process(trigger=Placed, key="order_id")
    async def proc(ctx: ov.Context, order: Placed) -> str:
        await ctx.wait_for("never", timeout=timedelta(hours=1))
        return "done"

    async with harness(app) as h:
        plain = ov.Client(h.client.backend)  # without the app: it cannot derive the key
        for i in range(6):
            plain.send("cancel.placed", {"order_id": f"o{i}"})  # keyless: any partition
        await h.idle()
        instances = h.client.instances()
        assert len(instances) == 6
        partitions = h.client.backend.log.partitions
        rows = [h.client.backend.store.instance(i.id) for i in instances]
        if partitions > 1:  # the case at hand: some live off their key's partition
            assert any(r and r.partition != partition_for(r.key, partitions) for r in rows)
        for instance in instances:
            h.client.cancel(instance.id)
        await h.idle()
        assert {i.key: i.status for i in h.client.instances()} == {
            f"o{i}": "cancelled" for i in range(6)
        }
