"""Handlers (at-least-once, retried, dead-lettered) and bad input (never crashes)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import overture as ov
from overture import protocol
from overture.events import Envelope, encode

from .conftest import Factory


class UserActivity(ov.Event, type="user.activity", key="user_id"):
    user_id: str
    action: str


RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=1))


async def test_every_handler_sees_every_event(harness: Factory) -> None:
    app = ov.App("fan")
    seen: dict[str, list[str]] = {"a": [], "b": []}

    @app.on(UserActivity)
    async def track(event: UserActivity) -> None:
        seen["a"].append(event.action)

    @app.on("user.activity")
    def audit(event: ov.Event) -> None:  # sync handlers run in the thread pool
        seen["b"].append(event.data["action"])

    async with harness(app) as h:
        for action in ("login", "click", "logout"):
            h.client.send(UserActivity(user_id="u1", action=action))
        await h.idle()
        # sync handlers run concurrently in threads: every event, in no guaranteed order
        assert seen["a"] == ["login", "click", "logout"]
        assert sorted(seen["b"]) == ["click", "login", "logout"]


async def test_failing_handler_is_retried_then_dead_lettered_then_replayed(
    harness: Factory,
) -> None:
    app = ov.App("dlq")
    state = {"broken": True, "calls": 0}

    @app.on(UserActivity, retry=RETRY, name="notify")
    async def notify(event: UserActivity) -> None:
        state["calls"] += 1
        if state["broken"]:
            raise ConnectionError("mail server down")

    async with harness(app) as h:
        h.client.send(UserActivity(user_id="u1", action="signup"))
        await h.idle()
        await h.advance(1)
        await h.advance(2)
        assert state["calls"] == 3
        (letter,) = h.client.dead_letters()
        assert letter.source == "handler:notify"
        assert letter.attempts == 3
        assert "ConnectionError: mail server down" in letter.reason
        assert letter.event_type == "user.activity"
        assert Envelope.from_dict(__import__("orjson").loads(letter.value)).data == {
            "user_id": "u1",
            "action": "signup",
        }
        state["broken"] = False
        h.client.replay_dead_letter(letter.id)
        await h.idle()
        assert state["calls"] == 4
        assert h.client.dead_letters() == []


async def test_handler_run_survives_restart(harness: Factory) -> None:
    app = ov.App("durable-handler")
    calls: list[int] = []

    @app.on("ping", retry=RETRY)
    async def pong(event: ov.Event) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")

    async with harness(app) as h:
        h.client.send("ping", {})
        await h.idle()
        await h.restart()
        await h.advance(1)
        assert calls == [0, 1]


async def test_malformed_and_invalid_records_are_dead_lettered_with_original_bytes(
    harness: Factory,
) -> None:
    app = ov.App("bad")
    started: list[str] = []

    @app.process(trigger=UserActivity)
    async def proc(ctx: ov.Context, event: UserActivity) -> None:
        started.append(event.action)

    async with harness(app) as h:
        h.client.send_raw(b"{not json", key="x")
        h.client.send_raw(b'{"specversion": "1.0", "data": {}}')
        invalid = Envelope(type="user.activity", data={"user_id": "u1"}, partitionkey="u1")
        h.client.send_raw(encode(invalid), key="u1")  # misses `action`
        h.client.send(UserActivity(user_id="u2", action="ok"))
        await h.idle()
        assert started == ["ok"]  # good input still flows
        letters = {d.value: d for d in h.client.dead_letters()}
        assert letters[b"{not json"].source == "decode"
        assert "not JSON" in letters[b"{not json"].reason
        assert "lacks required attribute" in letters[b'{"specversion": "1.0", "data": {}}'].reason
        if h.url.startswith("kafka:"):
            # Kafka keeps the record as the client wrote it: binary mode, data as the value
            bad = letters[b'{"user_id":"u1"}']
            assert bad.headers is not None and ("ce_id", invalid.id.encode()) in bad.headers
            assert bad.raw_key == b"u1"
        else:
            bad = letters[encode(invalid)]
            assert bad.headers is None and bad.raw_key is None
        assert bad.source == "validate"
        assert "action" in bad.reason
        assert bad.event_type == "user.activity"


async def test_key_function_errors_are_dead_lettered(harness: Factory) -> None:
    app = ov.App("badkey")

    @app.process(trigger="thing", key=lambda e: e.data["id"])
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        return None

    async with harness(app) as h:
        h.client.send("thing", {"no_id": 1})
        h.client.send("thing", {"id": 1})
        await h.idle()
        assert [i.key for i in h.client.instances()] == ["1"]
        (letter,) = h.client.dead_letters()
        assert letter.source == "route"
        assert "KeyError" in letter.reason


async def test_client_rejects_invalid_events_before_writing(harness: Factory) -> None:
    app = ov.App("strict")
    app.event(UserActivity)
    async with harness(app) as h:
        with pytest.raises(ov.EventValidationError, match="action"):
            h.client.send("user.activity", {"user_id": "u1"})
        assert h.client.events() == []


async def test_untyped_events_may_carry_any_json_data(harness: Factory) -> None:
    app = ov.App("any-json")
    seen: list[object] = []

    @app.on("list.event")
    async def collect(event: ov.Event) -> None:
        seen.append(event.data)

    async with harness(app) as h:
        h.client.send_many(
            [Envelope(type="list.event", data=[1, 2]), Envelope(type="other", data="text")]
        )
        await h.idle()
        assert seen == [[1, 2]]
        assert h.client.dead_letters() == []


async def test_an_engine_deletes_the_dead_letters_an_overture_dlq_delete_names(
    harness: Factory,
) -> None:
    """How a Kafka client deletes (the engines own the letters there), on every backend:
    the letters named, in one batch; an id that is gone is skipped (logged). The event
    goes to the letters' partition (here the one of key "k")."""
    async with harness(ov.App("empty")) as h:
        for n in range(3):
            h.client.send_raw(f"junk {n}".encode(), key="k")
        await h.idle()
        first, second, third = sorted(d.id for d in h.client.dead_letters())
        h.client.send(
            protocol.DLQ_DELETE,
            {"ids": [first, third, "gone"], "reason": "test"},
            key="k",
            reserved=True,
        )
        await h.idle()
        assert [d.id for d in h.client.dead_letters()] == [second]
