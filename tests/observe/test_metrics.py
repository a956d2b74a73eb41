"""Prometheus metrics: a known workload on a real engine (memory and SQLite) gives the
counters, histograms and store gauges it should, parsed back from the text exposition;
a real scrape of ``/metrics`` (uvicorn on 127.0.0.1) passes ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import overture as ov
from overture.http import ApiServer, bind, create_api
from overture.observe.metrics import MetricsObserver, exposition, store_registry
from overture.testing import Harness, VirtualClock

from ..http.conftest import started

RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=10))


def workload_app(attempts: list[int]) -> ov.App:
    """A process with a step failing once then retried, and a durable sleep; a handler
    that gives up at once (a dead letter)."""
    app = ov.App("metered")

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        result = await ctx.step(flaky, retry=RETRY, name="flaky")
        await ctx.sleep(timedelta(seconds=30))
        return result

    @app.on("audit", retry=ov.Retry(max_attempts=1), name="auditor")
    async def auditor(event: ov.Event) -> None:
        raise ValueError("no auditor today")

    return app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://metered"
    return f"sqlite:///{tmp_path / 'metered.db'}"


async def test_a_known_workload_gives_the_right_figures(url: str) -> None:
    metrics = MetricsObserver()
    attempts: list[int] = []
    clock = VirtualClock()
    async with Harness(workload_app(attempts), url, clock=clock, observer=metrics) as h:
        h.client.send("go", {}, key="a")
        h.client.send("audit", {}, key="b")
        await h.idle()
        clock.advance(10)  # the retry's backoff
        await h.idle()
        clock.advance(34)  # the sleep, due 30 s after the retry: 4 s late
        await h.idle()
        assert h.client.instances()[0].status == "completed"
        text = exposition(metrics.registry, store_registry(h.client)).decode()
    got = samples(text)
    assert got[("overture_instances_started_total", (("process", "proc"),))] == 1
    finished = (("process", "proc"), ("status", "completed"))
    assert got[("overture_instances_finished_total", finished)] == 1
    records = sum(v for (n, _), v in got.items() if n == "overture_records_consumed_total")
    assert records == 2
    assert (
        got[
            (
                "overture_step_attempt_duration_seconds_count",
                (("outcome", "error"), ("step", "flaky")),
            )
        ]
        == 1
    )
    assert (
        got[
            ("overture_step_attempt_duration_seconds_count", (("outcome", "ok"), ("step", "flaky")))
        ]
        == 1
    )
    assert got[("overture_step_retries_total", (("step", "flaky"),))] == 1
    assert got[("overture_dead_letters_total", (("source", "handler:auditor"),))] == 1
    assert got[("overture_timer_lateness_seconds_count", ())] == 1
    assert got[("overture_timer_lateness_seconds_sum", ())] == pytest.approx(4.0)
    commits = got[("overture_commit_duration_seconds_count", ())]
    assert commits >= 1 and got[("overture_commit_rows_count", ())] == commits
    # the store's gauges, read at scrape time
    assert got[("overture_instances", finished)] == 1
    assert got[("overture_dead_letters_parked", (("source", "handler:auditor"),))] == 1


def promtool() -> str | None:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None and os.environ.get("CI"):
        pytest.fail("promtool is missing (scripts/system-deps installs it)")
    return found


async def test_a_scrape_of_the_api_passes_promtool(tmp_path: Path) -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (scripts/system-deps installs it)")
    url = f"sqlite:///{tmp_path / 'scraped.db'}"
    metrics = MetricsObserver()
    attempts: list[int] = []
    app = workload_app(attempts)
    clock = VirtualClock()
    async with Harness(app, url, clock=clock, observer=metrics) as h:
        h.client.send("go", {}, key="a")
        h.client.send("audit", {}, key="b")
        await h.idle()
        api = create_api(app, h.backend, metrics_registry=metrics.registry)
        server = ApiServer(api, bind("127.0.0.1", 0))
        serve = asyncio.create_task(server.serve())
        try:
            await started(server)
            async with httpx.AsyncClient(base_url=f"http://{server.address}") as http:
                response = await http.get("/metrics")
        finally:
            server.stop()
            await serve
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    statuses = {dict(k[1])["status"]: v for k, v in got.items() if k[0] == "overture_instances"}
    assert statuses == {"running": 1}  # from the store: its step retries in 10 s
    assert got[("overture_instances_started_total", (("process", "proc"),))] == 1  # engine
    check = await asyncio.to_thread(
        subprocess.run,
        [tool, "check", "metrics"],
        input=response.text,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("cache_size", [0, 100])
async def test_cache_hits_and_replays_are_counted(url: str, cache_size: int) -> None:
    """The same workload: with a cache every later input finds its instance there; with
    none (``cache_size=0``) each later batch replays the journal so far."""
    metrics = MetricsObserver()
    clock = VirtualClock()
    async with Harness(
        workload_app([]), url, clock=clock, observer=metrics, cache_size=cache_size
    ) as h:
        h.client.send("go", {}, key="a")
        await h.idle()
        clock.advance(10)
        await h.idle()
        clock.advance(34)
        await h.idle()
        assert h.client.instances()[0].status == "completed"
    got = samples(exposition(metrics.registry).decode())
    label = (("process", "proc"),)
    hits = got.get(("overture_instance_cache_hits_total", label), 0.0)
    replays = got.get(("overture_instance_replays_total", label), 0.0)
    entries = got.get(("overture_instance_replayed_entries_total", label), 0.0)
    if cache_size:
        assert hits >= 2 and replays == 0 and entries == 0
    else:  # each later batch (the retry, the timer) replays; a batch's own inputs hit
        assert replays >= 2 and entries >= 2 * replays


def test_consumer_lag_counts_what_the_engines_have_not_consumed(url: str) -> None:
    app = workload_app([])
    with ov.Client(url, app=app) as client:
        assert client.lag() == {0: 0}
        for n in range(3):
            client.send("audit", {"n": n}, key=f"k{n}")
        assert client.lag() == {0: 3}
        got = samples(exposition(store_registry(client)).decode())
        assert got[("overture_consumer_lag", (("partition", "0"),))] == 3

        async def consume() -> None:
            async with Harness(app, url) as h:
                await h.idle()

        asyncio.run(consume())
        assert client.lag() == {0: 0}
        assert client.lag(group="engine:someone-else") == {0: 3}
    with ov.Client(url) as appless, pytest.raises(ov.ConfigError, match="needs the app"):
        appless.lag()
