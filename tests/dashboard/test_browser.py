"""The dashboard as a user meets it: a real browser (Debian's chromium, driven by
Playwright) against a real ``overture run --http`` subprocess on SQLite.

The user opens the overview, filters the instances, opens one and reads its timeline,
cancels it, watches a live event arrive (sent while the page is open) and replays a dead
letter. Each page is photographed into the test's directory; with
``OVERTURE_SCREENSHOTS=1`` the photos are copied to ``docs/screenshots/`` (tracked PNGs
are not rewritten on every run).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overture import Client

from ..http.test_processes import free_port, process, ready
from .demo import app

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (scripts/system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def photograph(page: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 1000
    if os.environ.get("OVERTURE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SHOTS / path.name)


@pytest.mark.timeout(180)
def test_a_user_walks_the_dashboard(tmp_path: Path, browser: object) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    port = free_port()
    log = tmp_path / "run.log"
    base = f"http://127.0.0.1:{port}"
    with (
        process(
            "run",
            "tests.dashboard.demo:app",
            "--backend",
            url,
            "--http",
            f"127.0.0.1:{port}",
            log=log,
        ) as proc,
        Client(url, app=app) as client,
    ):
        ready(base, proc, log)
        for n in range(1, 6):
            client.send("order.placed", {"order_id": f"o-{n}", "quantity": n})
        client.send("order.placed", {"order_id": "big-<1>", "quantity": 500})
        client.send("note.added", {"text": "fail <script>alert(1)</script>"})
        until(
            lambda: (
                client.instance_counts().get(("deliver", "completed"), 0) == 5
                and client.instance_counts().get(("fulfil", "waiting"), 0) == 1
                and len(client.dead_letters()) == 1
            ),
            "the demo's instances and dead letter",
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        dialogs: list[str] = []

        def accept(dialog: object) -> None:
            dialogs.append(dialog.message)  # type: ignore[attr-defined]
            dialog.accept()  # type: ignore[attr-defined]

        page.on("dialog", accept)
        outside: list[str] = []
        page.on(
            "request",
            lambda request: None if request.url.startswith(base) else outside.append(request.url),
        )

        # the overview: counts per process and status, the chart, the dead letter
        page.goto(f"{base}/")
        expect(page).to_have_url(f"{base}/ui/")
        expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
        counts = page.get_by_role("table", name="Instances of each process, by status")
        expect(counts.get_by_role("row", name="fulfil")).to_contain_text("1")
        expect(page.locator("svg.chart polyline.started")).to_have_count(1)
        expect(page.get_by_role("link", name="1 dead letter")).to_be_visible()
        photograph(page, tmp_path, "overview")

        # filter the instances: the waiting one
        page.get_by_role("link", name="Instances", exact=True).click()
        expect(page.locator("table.instances tbody tr")).to_have_count(11)
        page.get_by_label("Process").select_option("fulfil")
        page.get_by_label("Status").select_option("waiting")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("table.instances tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("big-<1>")  # shown as text, escaped
        photograph(page, tmp_path, "instances")

        # open it: its timeline shows the steps, the retried charge and the wait
        rows.first.get_by_role("link").click()
        expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
        svg = page.locator("svg.timeline")
        expect(svg).to_contain_text("trigger order.placed")
        expect(svg).to_contain_text("step reserve")
        expect(svg).to_contain_text("1 retry")
        expect(svg.locator("line.retry")).to_have_count(1)
        expect(svg).to_contain_text("wait order.approved")
        table = page.get_by_role("table", name="The timeline as a table")
        expect(table).to_contain_text("card network timeout")
        expect(table).to_contain_text("key=big-<1>")
        photograph(page, tmp_path, "instance")

        # cancel it (after the confirmation): the compensation runs, it ends cancelled
        page.get_by_role("button", name="Cancel this instance").click()
        expect(page.get_by_role("status")).to_contain_text("Cancellation requested")
        assert dialogs and "Cancel instance" in dialogs[-1]
        until(
            lambda: client.instance_counts().get(("fulfil", "cancelled"), 0) == 1,
            "the cancellation",
        )
        page.reload()
        expect(page.locator(".facts .status")).to_have_text("cancelled")
        expect(page.locator("svg.timeline")).to_contain_text("compensate release")

        # live events: one sent while the page is open appears
        page.get_by_role("link", name="Live events").click()
        expect(page.locator("#stream-status")).to_contain_text("Live")
        client.send("order.placed", {"order_id": "live-1", "quantity": 2})
        live = page.locator("#events tbody tr", has_text="order.placed").filter(has_text="live-1")
        expect(live).to_have_count(1, timeout=15_000)
        # what the engine did with it follows: the shipped event its instance emitted
        shipped = page.locator("#events tbody tr", has_text="order.shipped")
        expect(shipped.filter(has_text="live-1")).to_have_count(1, timeout=15_000)
        photograph(page, tmp_path, "events")

        # the dead letter: its bytes shown as text (escaped), replayed after confirming
        page.get_by_role("link", name="Dead letters").click()
        expect(page.locator("h2", has_text="refused note")).to_be_visible()
        page.locator("details summary").first.click()
        expect(page.locator("pre.bytes").first).to_contain_text("<script>alert(1)</script>")
        photograph(page, tmp_path, "dead-letters")
        page.get_by_role("button", name="Replay", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Replay requested for 1")
        until(lambda: client.dead_letters() == [], "the replayed letter to go through")
        page.reload()
        expect(page.get_by_text("No dead letters.")).to_be_visible()

        page.get_by_role("link", name="Processes").click()
        expect(page.locator("svg.graph")).to_contain_text("order.shipped")
        photograph(page, tmp_path, "processes")
        page.close()
        assert outside == [], f"the dashboard made requests elsewhere: {outside}"
