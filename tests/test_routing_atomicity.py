"""An event is routed whole or dead-lettered whole: a failing key function starts nothing."""

from __future__ import annotations

import overture as ov

from .conftest import Factory


class SignedUp(ov.Event, type="user.signed_up", key="user_id"):
    user_id: str
    referrer: str | None = None


def _referrer(event: ov.Event) -> str:
    assert isinstance(event, SignedUp)
    return event.referrer.lower()  # type: ignore[union-attr]  # fails on referrer=None


async def test_dead_lettered_trigger_starts_no_instance(harness: Factory) -> None:
    app = ov.App("routing")
    welcomed: list[str] = []

    @app.process(trigger=SignedUp, key="user_id")
    async def onboarding(ctx: ov.Context, event: SignedUp) -> str:
        return "onboarded"

    @app.process(trigger=SignedUp, key=_referrer)
    async def referral(ctx: ov.Context, event: SignedUp) -> str:
        return "credited"

    @app.on(SignedUp)
    async def welcome(event: SignedUp) -> None:
        welcomed.append(event.user_id)

    async with harness(app) as h:
        h.client.send(SignedUp(user_id="u1"))
        await h.idle()
        (letter,) = h.client.dead_letters()
        assert "referral" in letter.reason
        # the event was rejected as a whole: no instance of either process, no handler run
        await h.advance(3600)  # a handler run, had one been scheduled, would be due by now
        assert h.client.instances() == []
        assert welcomed == []
