"""Regression tests for the bugs fixed after review (one test per bug)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import field_validator

import overture as ov
from overture.events import Envelope, encode
from overture.testing import VirtualClock

from .conftest import Factory


class Boom(BaseException):
    """Neither an Exception nor a CancelledError: what some libraries raise."""


# -- 1: an event feeding one waiter is also buffered for a not-yet-waiting instance ----------


async def test_event_feeding_a_waiter_is_also_buffered_for_a_busy_instance_with_the_key(
    harness: Factory,
) -> None:
    app = ov.App("beside")

    @app.process(trigger="eager.go")
    async def eager(ctx: ov.Context, event: ov.Event) -> object:
        paid = await ctx.wait_for("paid")
        return paid.data["amount"]

    @app.process(trigger="late.go")
    async def late(ctx: ov.Context, event: ov.Event) -> object:
        await ctx.sleep(timedelta(seconds=5))  # "paid" arrives during this sleep
        try:
            paid = await ctx.wait_for("paid", timeout=timedelta(seconds=1))
        except ov.WaitTimeout:
            return "missed"
        return paid.data["amount"]

    async with harness(app) as h:
        h.client.send("eager.go", {}, key="k")
        h.client.send("late.go", {}, key="k")
        await h.idle()
        h.client.send("paid", {"amount": 3}, key="k")
        await h.idle()
        await h.advance(5)
        await h.advance(1)
        results = {i.process: (i.status, i.result) for i in h.client.instances()}
        assert results == {"eager": ("completed", 3), "late": ("completed", 3)}


# -- 2: buffered events come back in log order, not in event-id order -----------------------


async def test_buffered_events_come_back_in_log_order(harness: Factory) -> None:
    app = ov.App("inbox-order")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> list[object]:
        await ctx.sleep(timedelta(seconds=5))  # both events arrive during this sleep
        first = await ctx.wait_for("item", timeout=timedelta(seconds=1))
        second = await ctx.wait_for("item", timeout=timedelta(seconds=1))
        return [first.data["n"], second.data["n"]]

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        h.client.send("item", {"n": 1}, key="k", id="b")  # ids sort opposite to send order
        h.client.send("item", {"n": 2}, key="k", id="a")
        await h.idle()
        await h.restart()  # the buffered events are read back from the store
        await h.advance(5)
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", [1, 2])


# -- 3: an event arriving while its waiter is stuck is kept for when the code is fixed -------


def stuck_app(changed: bool) -> ov.App:
    app = ov.App("parked")

    async def a() -> str:
        return "a"

    async def b() -> str:
        return "b"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> object:
        await ctx.step(b if changed else a)
        try:
            got = await ctx.wait_for("continue", timeout=timedelta(hours=1))
        except ov.WaitTimeout:
            return "timed out"
        return got.data["n"]

    return app


async def test_event_for_a_stuck_waiter_is_delivered_once_the_code_is_fixed(
    harness: Factory,
) -> None:
    clock = VirtualClock()
    async with harness(stuck_app(changed=False), clock=clock) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        assert h.client.instances()[0].status == "waiting"
    async with harness(stuck_app(changed=True), clock=clock) as h:  # a bad deploy
        h.client.send("continue", {"n": 1}, key="k")
        await h.idle()
        assert h.client.instances()[0].status == "stuck"
    async with harness(stuck_app(changed=False), clock=clock) as h:  # the fix
        await h.idle()
        await h.advance(3600)  # the wait's timer wakes the instance up
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", 1)


# -- 4: a step raising CancelledError is a failed attempt, not a hang ------------------------


@pytest.mark.timeout(10)
async def test_step_raising_cancelled_error_is_a_failed_attempt(harness: Factory) -> None:
    app = ov.App("cancelled-step")

    async def cancelled() -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError()

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        try:
            await ctx.step(cancelled, retry=ov.Retry(max_attempts=1))
        except ov.StepFailed as error:
            return f"failed after {error.attempts}"
        return "finished"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "failed after 1")


# -- 5: a step raising a BaseException before its first await is a failed attempt -----------


@pytest.mark.timeout(10)
async def test_step_raising_base_exception_before_awaiting_is_a_failed_attempt(
    harness: Factory,
) -> None:
    app = ov.App("boom-step")
    calls: list[int] = []

    async def boom() -> None:
        calls.append(1)
        raise Boom("from a library")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        try:
            await ctx.step(
                boom, retry=ov.Retry(max_attempts=2, initial_interval=timedelta(seconds=1))
            )
        except ov.StepFailed as error:
            return f"failed after {error.attempts}: {error.message}"
        return "finished"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.advance(1)
        (instance,) = h.client.instances()
        assert instance.status == "completed"
        assert instance.result.startswith("failed after 2")
        assert "from a library" in instance.result
        assert calls == [1, 1]


# -- 6: process code raising a BaseException ends the instance failed ------------------------


async def test_process_raising_base_exception_ends_failed(harness: Factory) -> None:
    app = ov.App("boom-process")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        if event.data.get("boom"):
            raise Boom("process code")
        return "ok"

    async with harness(app) as h:
        h.client.send("go", {"boom": True}, key="bad")
        await h.idle()
        h.client.send("go", {}, key="good")  # the engine keeps working
        await h.idle()
        status = {i.key: i.status for i in h.client.instances()}
        assert status == {"bad": "failed", "good": "completed"}
        bad = next(i for i in h.client.instances() if i.key == "bad")
        assert "process code" in bad.error["message"]


# -- 7: ctx.emit with non-JSON data raises EventValidationError in the process ---------------


async def test_emit_with_non_json_data_raises_in_the_process(harness: Factory) -> None:
    app = ov.App("emit-json")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        try:
            ctx.emit("out", {"thing": object()})
        except ov.EventValidationError:
            ctx.emit("out", {"thing": "fine"})
            return "caught"
        return "emitted"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "caught")
        emitted = [e.envelope.data for e in h.client.events(type="out") if e.envelope]
        assert emitted == [{"thing": "fine"}]


# -- 8: a trigger contract that changed under a running instance parks it as stuck -----------


def contract_app(strict: bool) -> ov.App:
    app = ov.App("contract")

    class OrderV1(ov.Event, type="order.created", key="order_id"):
        order_id: str

    class OrderV2(ov.Event, type="order.created", key="order_id"):
        order_id: str
        region: str  # a new required field

    trigger = OrderV2 if strict else OrderV1

    @app.process(trigger=trigger, key="order_id")
    async def fulfil(ctx: ov.Context, order: ov.Event) -> str:
        await ctx.wait_for("continue")
        return "done"

    return app


async def test_changed_trigger_contract_parks_the_instance(harness: Factory) -> None:
    async with harness(contract_app(strict=False)) as h:
        h.client.send("order.created", {"order_id": "o1"})
        await h.idle()
        assert h.client.instances()[0].status == "waiting"
    async with harness(contract_app(strict=True)) as h:  # the new contract, same journal
        h.client.send("continue", {}, key="o1")
        await h.idle()
        (old,) = h.client.instances()
        assert old.status == "stuck"
        assert old.result is None
        # the engine keeps working
        h.client.send("order.created", {"order_id": "o2", "region": "eu"})
        h.client.send("continue", {}, key="o2")
        await h.idle()
        new = next(i for i in h.client.instances() if i.key == "o2")
        assert (new.status, new.result) == ("completed", "done")


# -- 9: cancelling during a compensation's retry backoff keeps that compensation -------------


async def test_cancel_during_compensation_backoff_keeps_the_compensation(
    harness: Factory,
) -> None:
    app = ov.App("cancel-comp")
    attempts: list[str] = []

    async def release(key: str) -> str:
        attempts.append(key)
        if len(attempts) == 1:
            raise ConnectionError("inventory service down")
        return "released"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        ctx.compensate_with(release, event.key)
        await ctx.wait_for("continue", timeout=timedelta(hours=1))
        return "done"

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        h.client.cancel(instance.id)
        await h.idle()
        assert attempts == ["k"]  # failed once, now in its backoff
        h.client.cancel(instance.id)  # a second cancel during the backoff
        await h.idle()
        await h.advance(60)
        (instance,) = h.client.instances()
        assert instance.status == "cancelled"
        assert attempts == ["k", "k"]  # retried to success
        results = [e for e in h.client.journal(instance.id) if e["k"] == "res"]
        assert results and results[-1].get("ok") == "released"


# -- 10: instances never share event data, and mutating it never rewrites the journal -------


async def test_event_data_is_private_to_each_instance_and_to_the_journal(
    harness: Factory,
) -> None:
    app = ov.App("private")

    @app.process(trigger="watch")
    async def watcher(ctx: ov.Context, event: ov.Event) -> list[str]:
        got = await ctx.wait_for("alarm", key="sensor-1")
        got.data.setdefault("seen_by", []).append(event.key)
        return list(got.data["seen_by"])

    @app.process(trigger="go")
    async def mutator(ctx: ov.Context, event: ov.Event) -> list[int]:
        event.data["items"].append(2)
        await ctx.sleep(timedelta(seconds=5))
        return list(event.data["items"])

    async with harness(app) as h:
        for key in ("w1", "w2", "w3"):
            h.client.send("watch", {}, key=key)
        h.client.send("go", {"items": [1]}, key="m")
        await h.idle()
        h.client.send("alarm", {"level": 5}, key="sensor-1")
        await h.idle()
        await h.restart()  # the mutator is replayed from its journal
        await h.advance(5)
        results = {i.key: i.result for i in h.client.instances()}
        assert results == {"w1": ["w1"], "w2": ["w2"], "w3": ["w3"], "m": [1, 2]}
        for instance in h.client.instances(process="watcher"):
            (res,) = [e for e in h.client.journal(instance.id) if e["k"] == "res"]
            assert "seen_by" not in res["ok"]["data"]


# -- 11: eager steps left over by the outcome budget survive a crash -----------------------


@pytest.mark.timeout(10)
async def test_eager_steps_beyond_the_batch_budget_survive_a_crash(harness: Factory) -> None:
    app = ov.App("eager")
    steps = 12  # 5 instances x 12 steps: more than the batch applies (2 x 4 x batch_size)

    async def bump(n: int) -> int:
        return n + 1  # never suspends: finishes eagerly, in the batch that scheduled it

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> int:
        n = 0
        for _ in range(steps):
            n = await ctx.step(bump, n)
        return n

    async with harness(app, batch_size=5) as h:
        if h.url.startswith("kafka:"):
            pytest.skip("drives one engine iteration by hand; Kafka delivers asynchronously")
        for i in range(10):
            h.client.send("go", {}, key=f"k{i}")
        assert await h.engine._iterate()  # one commit...
        assert h.engine._work.has_outcomes()  # ...with eager step outcomes left over by the budget
        await h.restart()  # a crash right after that commit
        await h.idle()
        instances = h.client.instances()
        assert len(instances) == 10
        assert {(i.status, i.result) for i in instances} == {("completed", steps)}


# -- 12: a validator's own error on raw input dead-letters the event ------------------------


class Tagged(ov.Event, type="tagged", key="tag_id"):
    tag_id: str
    name: str

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower()  # type: ignore[attr-defined]  # AttributeError on a list


async def test_validator_error_on_raw_input_is_dead_lettered(harness: Factory) -> None:
    app = ov.App("validator")
    seen: list[str] = []

    @app.on(Tagged)
    async def collect(event: Tagged) -> None:
        seen.append(event.name)

    async with harness(app) as h:
        bad = Envelope(type="tagged", data={"tag_id": "t1", "name": ["X"]}, partitionkey="t1")
        h.client.send_raw(encode(bad), key="t1")
        h.client.send(Tagged(tag_id="t2", name="Y"))
        await h.idle()
        assert seen == ["y"]  # good input still flows
        (letter,) = h.client.dead_letters()
        assert letter.source == "validate"
        if letter.headers is None:
            assert letter.value == encode(bad)
        else:  # Kafka keeps the record as the client wrote it: binary mode, data as value
            assert letter.value == b'{"tag_id":"t1","name":["X"]}' and letter.raw_key == b"t1"
        assert "AttributeError" in letter.reason


async def test_processes_started_by_one_event_do_not_share_its_data(harness: Factory) -> None:
    app = ov.App("shared-trigger")

    for name in ("first", "second"):

        @app.process(trigger="go", name=name)
        async def proc(ctx: ov.Context, event: ov.Event, name: str = name) -> list[str]:
            event.data["items"].append(name)
            return list(event.data["items"])

    async with harness(app) as h:
        h.client.send("go", {"items": []}, key="k")
        await h.idle()
        results = {i.process: i.result for i in h.client.instances()}
        assert results == {"first": ["first"], "second": ["second"]}


# -- 13: a correlation key holding a NUL still correlates after a restart ------------------


async def test_a_key_with_a_nul_still_correlates_after_a_restart(harness: Factory) -> None:
    app = ov.App("nul")

    @app.process(trigger="opened")
    async def wait_close(ctx: ov.Context, event: ov.Event) -> str:
        closed = await ctx.wait_for("closed")
        return str(closed.data["by"])

    async with harness(app) as h:
        h.client.send("opened", {}, key="A\x00B")
        await h.idle()
        await h.restart()  # the wait comes back from the store
        h.client.send("closed", {"by": "x"}, key="A\x00B")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.key, instance.status, instance.result) == ("A\x00B", "completed", "x")
