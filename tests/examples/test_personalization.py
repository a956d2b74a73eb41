"""``examples/personalization.py``: the sliding TopK against a plain-Python reference,
the follow-up process using the recommendations that include the purchase (earlier
updates skipped, the bought category left out), the bestsellers when none comes, on every
backend; and its README command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import overture as ov
from examples import personalization as pz

from ..test_examples import Factory
from .streamkit import T0, at, emitted, run_demo, settled

GRACE = pz.GRACE.total_seconds()
NOW = 2700
"""The purchase happens as the virtual clock starts; the visit before it."""
IDLE = GRACE


def visit() -> list[ov.Event]:
    """ann, a minute apart, then a purchase; an old view 40 minutes before (outside the
    30-minute window of everything after it)."""
    return [
        pz.ProductViewed(user_id="ann", product_id="k", category="kayaks", at=at(0 - NOW)),
        pz.ProductViewed(user_id="ann", product_id="s1", category="shoes", at=at(2400 - NOW)),
        pz.ProductViewed(user_id="ann", product_id="j1", category="jackets", at=at(2460 - NOW)),
        pz.CartItemAdded(user_id="ann", product_id="s1", category="shoes", at=at(2520 - NOW)),
        pz.ProductViewed(user_id="ann", product_id="h1", category="headphones", at=at(2580 - NOW)),
        pz.ProductViewed(user_id="ann", product_id="j2", category="jackets", at=at(2640 - NOW)),
        pz.PurchaseMade(
            user_id="ann",
            order_id="o-1",
            product_id="s1",
            category="shoes",
            amount_cents=8999,
            at=at(2700 - NOW),
        ),
    ]


def reference(events: list[ov.Event]) -> list[tuple[float, list[list[object]]]]:
    """Each event's window: the key's events in (t - 30 min, t], the top 3 categories
    (most frequent first, ties by name)."""
    size = pz.WINDOW.total_seconds()
    times = [(e.at.timestamp() - T0, e.category) for e in events]  # type: ignore[attr-defined]
    out = []
    for t, _ in times:
        counts = Counter(c for u, c in times if t - size < u <= t)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: pz.TOP]
        out.append((t, [[c, n] for c, n in ranked]))
    return out


async def test_recommendations_follow_the_sliding_window_and_the_follow_up_uses_them(
    harness: Factory,
) -> None:
    events = visit()
    async with harness(pz.app) as h:
        h.client.send_many(e.envelope for e in events)
        await h.idle()
        await h.advance(IDLE + GRACE)  # the idle clock closes the purchase's window
        updates = [e for e in emitted(h.client, pz.RecommendationsUpdated)]
        got = [
            (
                u.as_of.timestamp() - T0,
                [[c, n] for c, n in zip(u.categories, u.activity, strict=True)],
            )
            for u in updates
            if isinstance(u, pz.RecommendationsUpdated)
        ]
        assert sorted(got, key=lambda g: g[0]) == reference(events)
        assert got[-1][1] == [["shoes", 3], ["jackets", 2], ["headphones", 1]]  # no kayaks

        [follow_up] = settled(lambda: h.client.instances(process="follow_up"))
        assert follow_up.status == "completed"
        assert follow_up.result == {
            "order_id": "o-1",
            "recommended": ["jackets", "headphones"],
            "mail": "mail-o-1",
        }
        [sent] = emitted(h.client, pz.FollowUpSent)
        assert isinstance(sent, pz.FollowUpSent)
        assert (sent.order_id, sent.recommended) == ("o-1", ["jackets", "headphones"])
        assert h.client.dead_letters() == []


async def test_without_fresh_recommendations_the_follow_up_recommends_bestsellers(
    harness: Factory,
) -> None:
    app = ov.App("no-windows")  # the process alone: no update will ever come
    app.process(trigger=pz.PurchaseMade, waits=[pz.RecommendationsUpdated])(pz.follow_up)
    async with harness(app) as h:
        h.client.send(
            pz.PurchaseMade(
                user_id="bo",
                order_id="o-2",
                product_id="b",
                category="books",
                amount_cents=1,
                at=at(0),
            )
        )
        await h.idle()
        [waiting] = settled(h.client.instances)
        assert waiting.status == "waiting"
        await h.advance(pz.FRESH_TIMEOUT.total_seconds())
        done = h.client.instance(waiting.id)
        assert done.result == {"order_id": "o-2", "recommended": pz.BESTSELLERS, "mail": "mail-o-2"}


def test_the_readme_command(tmp_path: Path) -> None:
    db = tmp_path / "personalization.db"
    out = run_demo("personalization", db)
    assert (
        "recommendations of ann: [('running shoes', 5), ('rain jackets', 3), ('headphones', 1)]"
        in out
    )
    assert "'order_id': 'order-ann', 'recommended': ['rain jackets', 'headphones']" in out
    assert "'order_id': 'order-bo', 'recommended': ['books']" in out
    with ov.Client(f"sqlite:///{db}", app=pz.app) as client:
        sent = {e.user_id: e.recommended for e in emitted(client, pz.FollowUpSent)}  # type: ignore[attr-defined]
        assert sent == {"ann": ["rain jackets", "headphones"], "bo": ["books"]}
        assert client.dead_letters() == []
