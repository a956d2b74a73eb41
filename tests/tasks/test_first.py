"""``ctx.first`` (the first of several operations to finish) and ``ctx.abandon`` (stop
waiting for the rest): a race of task offers where the first acceptance wins and the
other offers are withdrawn from the queue, timers and waits abandoned, and replay."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import overture as ov

from .conftest import Factory, Worker


def offers_app() -> ov.App:
    app = ov.App("dispatch")

    @app.process(trigger="trip.requested", waits=["trip.completed"])
    async def dispatch(ctx: ov.Context, event: ov.Event) -> Any:
        offers = {d: ctx.call("driver.offer", {"driver": d}) for d in event.data["drivers"]}
        while offers:
            drivers = list(offers)
            i = await ctx.first(*offers.values())
            driver = drivers[i]
            if (await offers.pop(driver))["accepted"]:
                ctx.abandon(*offers.values())
                await ctx.wait_for("trip.completed")
                return driver
        return None

    return app


async def test_the_first_acceptance_wins_and_the_other_offers_are_withdrawn(
    harness: Factory,
) -> None:
    async with harness(offers_app()) as h:
        h.client.send("trip.requested", {"drivers": ["ann", "bob", "cy"]}, key="t1")
        await h.idle()
        worker = Worker(h)
        by_driver = {a.request.input["driver"]: a for a in worker.claim(expect=3)}
        assert sorted(by_driver) == ["ann", "bob", "cy"]
        worker.complete(by_driver["bob"], {"accepted": False})  # a decline: keep waiting
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "running"
        worker.complete(by_driver["cy"], {"accepted": True})
        await h.idle()
        # ann's offer was withdrawn when cy won, while the trip goes on: her answer is
        # refused, and nothing is left to claim
        assert h.client.instance(instance.id).status == "waiting"
        assert worker.complete(by_driver["ann"], {"accepted": True}) == worker.late
        await h.idle()
        assert h.client.instance(instance.id).status == "waiting"  # (Kafka: dropped)
        assert worker.claim() == []
        h.client.send("trip.completed", {}, key="t1")
        await h.idle()
        instance = h.client.instance(instance.id)
        assert (instance.status, instance.result) == ("completed", "cy")
        abandoned = [e for e in h.client.journal(instance.id) if e.get("op") == "abandon"]
        ann_seq = by_driver["ann"].request.seq
        assert [e["n"] for e in abandoned] == [f"#{ann_seq}"]


async def test_an_abandoned_offer_stays_abandoned_after_a_restart(harness: Factory) -> None:
    async with harness(offers_app()) as h:
        h.client.send("trip.requested", {"drivers": ["ann", "bob"]}, key="t1")
        await h.idle()
        worker = Worker(h)
        by_driver = {a.request.input["driver"]: a for a in worker.claim(expect=2)}
        worker.complete(by_driver["ann"], {"accepted": True})
        await h.idle()
        await h.restart()
        assert worker.complete(by_driver["bob"], {"accepted": True}) == worker.late
        assert worker.claim() == []
        h.client.send("trip.completed", {}, key="t1")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "ann")


async def test_first_of_a_wait_and_a_timer_abandons_the_loser(harness: Factory) -> None:
    app = ov.App("race")

    @app.process(trigger="go", waits=["ping"])
    async def race(ctx: ov.Context, event: ov.Event) -> Any:
        ping = ctx.wait_for("ping")
        nap = ctx.sleep(timedelta(minutes=5))
        winner = await ctx.first(ping, nap)
        ctx.abandon(ping, nap)  # the winner is finished: abandoning it does nothing
        try:
            await (nap if winner == 0 else ping)
        except ov.OperationAbandoned as error:
            lost = error.operation
        await ctx.sleep(timedelta(hours=1))
        return [winner, lost]

    async with harness(app) as h:
        h.client.send("go", {}, key="a")
        h.client.send("go", {}, key="b")
        await h.idle()
        h.client.send("ping", {}, key="a")
        await h.idle()
        await h.advance(300)
        # both still running (their last sleep): the losers' wait and timer are gone
        store = h.backend.store
        assert store.waits() == []
        assert sorted(w.kind for w in store.work()) == ["timer", "timer"]
        assert {w.due for w in store.work()} == {h.clock.now() + 3600 - 300, h.clock.now() + 3600}
        h.client.send("ping", {}, key="b")  # nobody waits for it any more
        await h.idle()
        await h.advance(3600)
        results = {i.key: i.result for i in h.client.instances()}
        assert results == {"a": [0, "sleep"], "b": [1, "wait"]}


async def test_first_prefers_the_earliest_argument_among_finished_ones(harness: Factory) -> None:
    app = ov.App("order")

    @app.process(trigger="go")
    async def both(ctx: ov.Context, event: ov.Event) -> Any:
        a, b = ctx.call("a"), ctx.call("b")
        await ctx.gather(a, b)
        return await ctx.first(b, a)

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        worker = Worker(h)
        for attempt in worker.claim(expect=2):
            worker.complete(attempt, attempt.request.task)
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.result == 0


async def test_first_and_abandon_refuse_what_they_cannot_use(harness: Factory) -> None:
    app = ov.App("bad")

    @app.process(trigger="go")
    async def bad(ctx: ov.Context, event: ov.Event) -> Any:
        problems = []
        for attempt in (lambda: ctx.first(), lambda: ctx.first(42), lambda: ctx.abandon(42)):
            try:
                attempt()  # type: ignore[no-untyped-call]
            except TypeError as error:
                problems.append(str(error).split(" ")[0])
        return problems

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.result == ["ctx.first", "ctx.first", "ctx.abandon"]


@pytest.mark.parametrize("abandon_first", [True, False])
async def test_an_abandoned_step_outcome_is_dropped(harness: Factory, abandon_first: bool) -> None:
    app = ov.App("steps")
    ran: list[str] = []

    async def slow() -> str:
        ran.append("slow")
        raise RuntimeError("flaky")  # retried after 1 s unless abandoned

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        step = ctx.step(slow, retry=ov.Retry(max_attempts=5))
        nap = ctx.sleep(timedelta(milliseconds=500))
        await ctx.first(step, nap) if abandon_first else await nap
        ctx.abandon(step)
        await ctx.sleep(timedelta(seconds=10))
        return "done"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(0.5)
        await h.advance(20)
        (instance,) = h.client.instances()
        assert instance.result == "done"
        assert ran == ["slow"]  # the retry due after 1 s never ran
