"""Personalization: what a shopper looks at drives what the shop recommends next.

- ``interests``: a 30-minute sliding window per user over product views, cart additions
  and purchases; each event's window (the user's activity of the 30 minutes up to it)
  ranks the categories with ``TopK`` and emits ``recommendations.updated`` once the
  window closes (the event's time plus the 2 seconds of grace).
- ``follow_up``: a process per purchase. It waits for the recommendations that include
  the purchase itself (earlier updates are skipped), recommends the user's other top
  categories (the one just bought is left out: cross-selling), sends the follow-up
  e-mail in a durable step and emits ``followup.sent``. Without fresh recommendations
  within :data:`FRESH_TIMEOUT` it recommends :data:`BESTSELLERS`.

Event time is each event's ``at`` (the shop front's clock).

Run it, on a fresh SQLite file, with a real ``overture run`` (the demo sends two shoppers'
last ten minutes and a purchase each)::

    python -m examples.personalization

or run the engine yourself: ``overture run examples.personalization:app``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

import overture as ov

from . import streamdemo

log = logging.getLogger("examples.personalization")

TOP = 3
"""How many categories the recommendations rank."""
WINDOW = timedelta(minutes=30)
GRACE = timedelta(seconds=2)
FRESH_TIMEOUT = timedelta(minutes=1)
"""How long the follow-up waits for recommendations that include the purchase."""
BESTSELLERS = ["gift cards", "books"]


def _now() -> datetime:
    return datetime.now(UTC)


class ProductViewed(ov.Event, type="product.viewed", key="user_id"):
    user_id: str
    product_id: str
    category: str
    at: datetime = Field(default_factory=_now)


class CartItemAdded(ov.Event, type="cart.item_added", key="user_id"):
    user_id: str
    product_id: str
    category: str
    at: datetime = Field(default_factory=_now)


class PurchaseMade(ov.Event, type="purchase.made", key="user_id"):
    user_id: str
    order_id: str
    product_id: str
    category: str
    amount_cents: int
    at: datetime = Field(default_factory=_now)


class RecommendationsUpdated(ov.Event, type="recommendations.updated", key="user_id"):
    user_id: str
    categories: list[str]
    """The user's top categories, most active first."""
    activity: list[int]
    """How many events of each of those categories the window holds."""
    events: int
    as_of: datetime
    """The end of the window: the time of the event that made this update."""


class FollowUpSent(ov.Event, type="followup.sent", key="user_id"):
    user_id: str
    order_id: str
    recommended: list[str]


app = ov.App("personalization")


@app.window(
    source=[ProductViewed, CartItemAdded, PurchaseMade],
    key="user_id",
    window=ov.Sliding(WINDOW),
    aggregate={"top": ov.TopK("category", TOP), "events": ov.Count()},
    grace=GRACE,
    time_field="at",
)
def interests(result: ov.WindowResult) -> RecommendationsUpdated:
    top = result.values["top"]
    return RecommendationsUpdated(
        user_id=result.key,
        categories=[category for category, _ in top],
        activity=[n for _, n in top],
        events=result.values["events"],
        as_of=result.end,
    )


def send_follow_up(user_id: str, order_id: str, categories: list[str]) -> str:
    """Send the e-mail (a real one calls the mailer with ``ctx.idempotency_key``)."""
    log.info("to %s about order %s: you may also like %s", user_id, order_id, categories)
    return f"mail-{order_id}"


async def fresh_recommendations(
    ctx: ov.Context, purchase: PurchaseMade
) -> RecommendationsUpdated | None:
    """The first update whose window includes the purchase, or None after
    :data:`FRESH_TIMEOUT`."""
    while True:
        try:
            update = await ctx.wait_for(RecommendationsUpdated, timeout=FRESH_TIMEOUT)
        except ov.WaitTimeout:
            return None
        if update.as_of >= purchase.at:
            return update


@app.process(trigger=PurchaseMade, waits=[RecommendationsUpdated], emits=[FollowUpSent])
async def follow_up(ctx: ov.Context, purchase: PurchaseMade) -> dict[str, Any]:
    update = await fresh_recommendations(ctx, purchase)
    if update is None:
        recommended = BESTSELLERS
    else:
        recommended = [c for c in update.categories if c != purchase.category] or BESTSELLERS
    mail = await ctx.step(send_follow_up, purchase.user_id, purchase.order_id, recommended)
    ctx.emit(
        FollowUpSent(user_id=purchase.user_id, order_id=purchase.order_id, recommended=recommended)
    )
    return {"order_id": purchase.order_id, "recommended": recommended, "mail": mail}


# -- the demo: python -m examples.personalization ------------------------------------------

VISITS: dict[str, list[tuple[str, str]]] = {
    "ann": [
        ("view", "running shoes"),
        ("view", "rain jackets"),
        ("view", "running shoes"),
        ("view", "headphones"),
        ("cart", "running shoes"),
        ("view", "rain jackets"),
        ("cart", "rain jackets"),
        ("view", "running shoes"),
        ("buy", "running shoes"),
    ],
    "bo": [
        ("view", "books"),
        ("view", "board games"),
        ("view", "books"),
        ("buy", "board games"),
    ],
}
"""Each shopper's last ten minutes: what they viewed, put in the cart, bought."""


def activity(now: datetime) -> list[ov.Event]:
    """The visits as events, a minute apart per shopper, in time order."""
    events: list[tuple[datetime, ov.Event]] = []
    for user, visit in VISITS.items():
        for n, (what, category) in enumerate(visit):
            at = streamdemo.ago(60 * (len(visit) - n), now)
            product = f"{category.replace(' ', '-')}-{n}"
            event: ov.Event
            if what == "view":
                event = ProductViewed(user_id=user, product_id=product, category=category, at=at)
            elif what == "cart":
                event = CartItemAdded(user_id=user, product_id=product, category=category, at=at)
            else:
                event = PurchaseMade(
                    user_id=user,
                    order_id=f"order-{user}",
                    product_id=product,
                    category=category,
                    amount_cents=4999,
                    at=at,
                )
            events.append((at, event))
    return [e for _, e in sorted(events, key=lambda pair: pair[0])]


def main(argv: list[str] | None = None) -> None:
    db = streamdemo.parse_args("The personalization example, end to end.", argv)

    def scenario(client: ov.Client) -> None:
        client.send_many(e.envelope for e in activity(datetime.now(UTC)))

    def done(client: ov.Client) -> bool:
        follow_ups = client.instances(process="follow_up")
        return len(follow_ups) == len(VISITS) and all(i.status == "completed" for i in follow_ups)

    streamdemo.run("examples.personalization:app", app, db, scenario, done)
    with ov.Client(f"sqlite:///{db}", app=app) as client:
        for e in streamdemo.emitted(client, RecommendationsUpdated)[-len(VISITS) :]:
            assert isinstance(e, RecommendationsUpdated)
            ranked = list(zip(e.categories, e.activity, strict=True))
            print(f"recommendations of {e.user_id}: {ranked}")
        for i in client.instances(process="follow_up"):
            print(f"follow-up of {i.key}: {i.result}")
    print(f"database: {db}")


if __name__ == "__main__":
    main()
