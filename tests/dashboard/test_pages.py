"""Each dashboard route over HTTP against the real API (uvicorn on 127.0.0.1, an engine
on SQLite next to it): filters, pages, escaping, the live stream, actions and the 4xx
pages of bad input."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ..http.conftest import Served, serving
from .demo import app

INSTANCE_LINK = re.compile(r'href="/ui/instances/([0-9a-f]{20,})"')


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(f"sqlite:///{tmp_path / 'dash.db'}", app=app) as running:
        yield running


async def settle(served: Served, check: object, what: str) -> None:
    for _ in range(400):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


def client_of(served: Served):  # type: ignore[no-untyped-def]
    return served.api.state.overture.client


async def orders(served: Served, n: int, *, big: tuple[str, ...] = ()) -> None:
    client = client_of(served)
    for i in range(n):
        await client.send("order.placed", {"order_id": f"o-{i:03d}", "quantity": 1})
    for order_id in big:
        await client.send("order.placed", {"order_id": order_id, "quantity": 500})

    async def done() -> bool:
        counts = await client.instance_counts()
        return counts.get(("deliver", "completed"), 0) == n and counts.get(
            ("fulfil", "waiting"), 0
        ) == len(big)

    await settle(served, done, "the orders")


async def test_root_redirects_to_the_overview_which_counts_by_process_and_status(
    shop: Served,
) -> None:
    await orders(shop, 3, big=("b-1",))
    home = await shop.http.get("/")
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    page = await shop.http.get("/ui/")
    assert page.status_code == 200
    html = page.text
    assert '<main id="main"' in html and "<nav" in html and "<h1>Overview</h1>" in html
    row = re.search(r"<th scope=\"row\"><a [^>]*>fulfil</a></th>(.*?)</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">(?:<a [^>]*>)?(\d+)', row.group(1))
    assert cells == ["0", "1", "3", "0", "0", "0"]  # running waiting completed failed ...
    assert "started: 7" in html  # 4 fulfil + 3 deliver, this minute
    assert "completed: 6" in html


async def test_instances_filter_search_and_pages(shop: Served) -> None:
    await orders(shop, 30, big=("b-1", "b-2"))
    everything = await shop.http.get("/ui/instances", params={"limit": "100"})
    assert len(INSTANCE_LINK.findall(everything.text)) == 62
    waiting = await shop.http.get("/ui/instances", params={"status": "waiting"})
    assert len(INSTANCE_LINK.findall(waiting.text)) == 2
    keyed = await shop.http.get("/ui/instances", params={"key": "o-007", "process": "fulfil"})
    (only,) = INSTANCE_LINK.findall(keyed.text)
    by_prefix = await shop.http.get("/ui/instances", params={"q": only[:14]})
    assert only in INSTANCE_LINK.findall(by_prefix.text)
    by_key = await shop.http.get("/ui/instances", params={"q": "o-007"})
    assert len(INSTANCE_LINK.findall(by_key.text)) == 2  # its fulfil and its deliver
    # pages of 25, newest first, each instance once, the filters kept on "Older"
    seen: list[str] = []
    url: str | None = "/ui/instances?process=fulfil&limit=25"
    while url is not None:
        page = await shop.http.get(url.replace("&amp;", "&"))
        assert page.status_code == 200
        seen.extend(INSTANCE_LINK.findall(page.text))
        older = re.search(r'<a href="([^"]+)" rel="next">', page.text)
        url = None if older is None else older.group(1)
        if url is not None:
            assert "process=fulfil" in url
    assert len(seen) == 32 == len(set(seen))
    from_ = await shop.http.get("/ui/instances", params={"from": "2000-01-01T00:00"})
    assert len(INSTANCE_LINK.findall(from_.text)) == 50
    before = await shop.http.get("/ui/instances", params={"to": "2000-01-01T00:00"})
    assert INSTANCE_LINK.findall(before.text) == [] and "No instance matches." in before.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "bogus"}, "status: &#39;bogus&#39; is not a status"),
        ({"limit": "7"}, "limit: &#39;7&#39; is not a page size"),
        ({"limit": "-1"}, "limit"),
        ({"cursor": "zz"}, "invalid cursor"),
        ({"cursor": "WzEsMl0"}, "invalid cursor"),  # [1,2]: JSON, but not a cursor
        ({"from": "yesterday"}, "from: &#39;yesterday&#39; is not a time"),
        ({"from": "2030-01-01", "to": "2020-01-01"}, "the time range is empty"),
        ({"process": "nope"}, "no process named &#39;nope&#39;"),
        ({"colour": "red"}, "unknown parameter(s) &#39;colour&#39;"),
    ],
)
async def test_bad_instance_filters_get_a_400_page_saying_why(
    shop: Served, params: dict[str, str], message: str
) -> None:
    page = await shop.http.get("/ui/instances", params=params)
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert message in page.text
    assert "<h1>Bad request</h1>" in page.text


async def test_one_instance_timeline_journal_and_escaping(shop: Served) -> None:
    await orders(shop, 0, big=("<b>big</b>",))
    listing = await shop.http.get("/ui/instances", params={"status": "waiting"})
    (iid,) = INSTANCE_LINK.findall(listing.text)
    assert "&lt;b&gt;big&lt;/b&gt;" in listing.text and "<b>big</b>" not in listing.text
    page = await shop.http.get(f"/ui/instances/{iid[-8:]}")  # a short form works too
    assert page.status_code == 200
    html = page.text
    assert "<b>big</b>" not in html
    svg = html[
        html.index('<svg class="timeline"') : html.index(
            "</svg>", html.index('<svg class="timeline"')
        )
    ]
    for label in ("trigger order.placed", "step reserve", "step charge", "wait order.approved"):
        assert label in svg
    assert svg.count('class="retry"') == 1  # charge's first attempt failed
    assert "card network timeout" in html
    assert "deadline" in html and "key=&lt;b&gt;big&lt;/b&gt;" in html
    assert "journal entries" in html and "Cancel this instance" in html
    missing = await shop.http.get("/ui/instances/0123456789abcdef")
    assert missing.status_code == 404 and "no instance" in missing.text


async def test_cancel_posts_from_the_page_and_refuses_cross_site_requests(shop: Served) -> None:
    await orders(shop, 0, big=("b-1",))
    client = client_of(shop)
    (waiting,) = (await client.find_instances(status="waiting")).instances
    forged = await shop.http.post(
        f"/ui/instances/{waiting.id}/cancel", headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    sneaky = await shop.http.post(
        f"/ui/instances/{waiting.id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert sneaky.status_code == 403
    assert (await client.instance(waiting.id)).status == "waiting"
    done = await shop.http.post(f"/ui/instances/{waiting.id}/cancel", headers={"Origin": shop.url})
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/ui/instances/{waiting.id}?cancelled=")

    async def cancelled() -> bool:
        return (await client.instance(waiting.id)).status == "cancelled"

    await settle(shop, cancelled, "the cancellation")
    page = await shop.http.get(f"/ui/instances/{waiting.id}")
    assert "compensate release" in page.text and "Cancel this instance" not in page.text
    again = await shop.http.post(f"/ui/instances/{waiting.id}/cancel")
    assert again.status_code == 400 and "already cancelled" in again.text


async def test_dead_letters_grouped_bytes_escaped_or_hex_and_replayed(shop: Served) -> None:
    client = client_of(shop)
    await client.send("note.added", {"text": "fail <i>one</i>"})
    await client.send_raw(b"\xff\xfe<b>\x00binary")

    async def parked() -> bool:
        return len(await client.dead_letters()) == 2

    await settle(shop, parked, "two dead letters")
    page = await shop.http.get("/ui/dead-letters")
    html = page.text
    assert html.count('<h2 id="reason-') == 2
    assert "fail &lt;i&gt;one&lt;/i&gt;" in html and "<i>one</i>" not in html
    assert "ff fe 3c 62 3e 00 62 69" in html  # the undecodable bytes, as hex
    nothing = await shop.http.post("/ui/dead-letters/replay", content=b"")
    assert nothing.status_code == 400 and "none was selected" in nothing.text
    unknown = await shop.http.post("/ui/dead-letters/replay", content=b"only=nope")
    assert unknown.status_code == 404 and "nothing was replayed" in unknown.text
    (note,) = [d for d in await client.dead_letters() if d.source.startswith("handler")]
    replayed = await shop.http.post(
        "/ui/dead-letters/replay",
        content=f"reason={note.reason}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert replayed.status_code == 303 and replayed.headers["location"].endswith("replayed=1")

    async def retried() -> bool:
        return [d.id for d in await client.dead_letters()] != [] and note.id not in {
            d.id for d in await client.dead_letters()
        }

    await settle(shop, retried, "the replayed note to go through")


async def test_live_stream_sends_events_appended_after_it_opened(shop: Served) -> None:
    client = client_of(shop)
    await client.send("note.added", {"text": "before"})
    async with shop.http.stream("GET", "/ui/events/stream", params={"type": "note.added"}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = s.aiter_lines()
        assert await anext(lines) == "event: ready"
        await client.send("order.placed", {"order_id": "skip", "quantity": 1})
        await client.send("note.added", {"text": "<after>"})
        got = []
        async for line in lines:
            got.append(line)
            if line.startswith("data: <tr"):
                break
        data = got[-1]
        assert "&lt;after&gt;" in data and "before" not in data and "order.placed" not in data
    bad = await shop.http.get("/ui/events/stream", params={"nope": "1"})
    assert bad.status_code == 400
    page = await shop.http.get("/ui/events", params={"type": "note.added"})
    assert 'data-stream="/ui/events/stream?type=note.added"' in page.text


async def test_processes_page_static_assets_and_no_outside_urls(shop: Served) -> None:
    page = await shop.http.get("/ui/processes")
    assert page.status_code == 200
    assert "order.shipped" in page.text and 'class="edge emits"' in page.text
    for name in ("dashboard.css", "dashboard.js"):
        asset = await shop.http.get(f"/ui/static/{name}")
        assert asset.status_code == 200 and len(asset.content) > 500
    assert (await shop.http.get("/ui/static/..%2Fapi.py")).status_code == 404
    for path in ("/ui/", "/ui/instances", "/ui/events", "/ui/dead-letters", "/ui/processes"):
        html = (await shop.http.get(path)).text
        assert re.findall(r'(?:src|href)="(?:https?:)?//', html) == [], path


async def test_dead_letters_deleted_from_the_page(shop: Served) -> None:
    client = client_of(shop)
    for n in range(3):
        await client.send_raw(f"junk {n}".encode())

    async def parked() -> bool:
        return len(await client.dead_letters()) == 3

    await settle(shop, parked, "three dead letters")
    html = (await shop.http.get("/ui/dead-letters")).text
    assert 'formaction="/ui/dead-letters/delete"' in html and "for good?" in html
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    unknown = await shop.http.post("/ui/dead-letters/delete", content=b"id=nope", headers=form)
    assert unknown.status_code == 404 and "nothing was deleted" in unknown.text
    nothing = await shop.http.post("/ui/dead-letters/delete", content=b"", headers=form)
    assert nothing.status_code == 400 and "select the dead letters to delete" in nothing.text
    first, *rest = sorted(d.id for d in await client.dead_letters())
    one = await shop.http.post(
        "/ui/dead-letters/delete", content=f"only={first}".encode(), headers=form
    )
    assert one.status_code == 303 and one.headers["location"].endswith("deleted=1")
    assert sorted(d.id for d in await client.dead_letters()) == rest
    page = await shop.http.get(one.headers["location"])
    assert "Deleted 1 dead letter(s)." in page.text
    (reason,) = {d.reason for d in await client.dead_letters()}
    everything = await shop.http.post(
        "/ui/dead-letters/delete", content=f"reason={reason}".encode(), headers=form
    )
    assert everything.status_code == 303 and everything.headers["location"].endswith("deleted=2")
    assert await client.dead_letters() == []
