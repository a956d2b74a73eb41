"""Guarantees that a one-line bug once broke without any test noticing.

Each test names the guarantee it pins; ``scripts/mutants`` lists the deliberate bugs each
one must catch. Timing-dependent guarantees (crashes inside a commit) are in
``tests/durability/``.
"""

from __future__ import annotations

from datetime import timedelta

import overture as ov
from overture.runtime.staging import Outcome

from .conftest import Factory

RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=10))


async def test_an_event_for_another_key_is_never_taken_by_a_later_wait(
    harness: Factory,
) -> None:
    """An event buffered for an instance (it carries the instance's key) must not feed a
    wait that starts later on another key, nor one on another type."""
    app = ov.App("other-key")

    @app.process(trigger="shipment.requested")
    async def ship(ctx: ov.Context, event: ov.Event) -> object:
        await ctx.sleep(timedelta(seconds=5))  # the events below arrive meanwhile
        try:
            got = await ctx.wait_for(
                "carrier.assigned", key=event.data["carrier_ref"], timeout=timedelta(seconds=5)
            )
        except ov.WaitTimeout:
            return "no carrier"
        return got.data

    async with harness(app) as h:
        h.client.send("shipment.requested", {"carrier_ref": "C-1"}, key="o1")
        h.client.send("shipment.requested", {"carrier_ref": "C-2"}, key="o2")
        await h.idle()
        # both buffered for o1 (its key), neither is what o1 will wait for
        h.client.send("carrier.assigned", {"carrier": "wrong key"}, key="o1")
        h.client.send("carrier.other", {"carrier": "wrong type"}, key="o1")
        h.client.send("carrier.assigned", {"carrier": "UPS"}, key="C-2")  # before o2 waits
        await h.idle()
        await h.advance(5)
        h.client.send("carrier.assigned", {"carrier": "DHL"}, key="C-1")
        await h.idle()
        results = {i.key: i.result for i in h.client.instances()}
        # the event sent before o2's wait existed (on a key no instance has) is not kept
        assert results == {"o1": {"carrier": "DHL"}, "o2": None}
        await h.advance(5)
        results = {i.key: i.result for i in h.client.instances()}
        assert results == {"o1": {"carrier": "DHL"}, "o2": "no carrier"}


async def test_an_instance_is_never_fed_its_own_emitted_event(harness: Factory) -> None:
    """An emitted event reaches the other instances with its key, never its emitter."""
    app = ov.App("echo")

    @app.process(trigger="echo.go")
    async def echo(ctx: ov.Context, event: ov.Event) -> str:
        if event.data["emit"]:
            ctx.emit("ping", {"from": event.data["name"]})  # keyed by this instance's key
        await ctx.sleep(timedelta(seconds=5))
        try:
            got = await ctx.wait_for("ping", timeout=timedelta(seconds=1))
        except ov.WaitTimeout:
            return "nothing"
        return f"ping from {got.data['from']}"

    async with harness(app) as h:
        h.client.send("echo.go", {"emit": True, "name": "a"}, key="k")
        h.client.send("echo.go", {"emit": False, "name": "b"}, key="k")
        await h.idle()
        await h.advance(5)
        await h.advance(1)
        results = {i.result for i in h.client.instances()}
        assert results == {"nothing", "ping from a"}


async def test_handler_idempotency_key_is_stable_across_attempts_and_restarts(
    harness: Factory,
) -> None:
    app = ov.App("idem-handler")
    seen: list[tuple[str, int]] = []

    @app.on("ping", retry=RETRY)
    async def pong(event: ov.Event) -> None:
        info = ov.current_step()
        assert info is not None
        seen.append((info.idempotency_key, info.attempt))
        if info.attempt < 3:
            raise RuntimeError("try again")

    async with harness(app) as h:
        h.client.send("ping", {}, key="k")
        h.client.send("ping", {}, key="k")  # another event: another key
        await h.idle()
        await h.advance(10)
        await h.restart()
        await h.advance(20)
        by_key: dict[str, list[int]] = {}
        for key, attempt in seen:
            by_key.setdefault(key, []).append(attempt)
        # one key per event, the same for all its attempts, before and after the restart
        assert sorted(by_key.values()) == [[1, 2, 3], [1, 2, 3]], seen


async def test_step_idempotency_key_survives_a_restart(harness: Factory) -> None:
    app = ov.App("idem-restart")
    seen: list[tuple[str, int]] = []

    async def flaky() -> str:
        info = ov.current_step()
        assert info is not None
        seen.append((info.idempotency_key, info.attempt))
        if info.attempt == 1:
            raise RuntimeError("try again")
        return info.idempotency_key

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> list[str]:
        expected = ctx.idempotency_key
        return [expected, await ctx.step(flaky, retry=RETRY)]

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        await h.restart()
        await h.advance(10)
        (instance,) = h.client.instances()
        expected, got = instance.result
        assert [a for _, a in seen] == [1, 2]
        assert {k for k, _ in seen} == {expected} == {got}


async def test_an_outcome_of_an_older_attempt_is_discarded(harness: Factory) -> None:
    """A late report of attempt 1 (already failed and rescheduled) must not resolve the
    step: only the current attempt's outcome counts."""
    app = ov.App("stale")
    attempts: list[int] = []

    async def flaky() -> str:
        info = ov.current_step()
        assert info is not None
        attempts.append(info.attempt)
        if info.attempt == 1:
            raise RuntimeError("first attempt fails")
        return f"attempt {info.attempt}"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        return str(await ctx.step(flaky, retry=RETRY, name="flaky"))

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        work_id = f"{instance.id}:1"
        assert attempts == [1]
        # attempt 1's outcome arrives again, late (a duplicated report), this time "ok"
        h.engine._work.report(Outcome(work_id, 1, True, "stale attempt 1"))
        await h.idle()
        assert h.client.instances()[0].result is None
        await h.advance(10)
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "attempt 2")
