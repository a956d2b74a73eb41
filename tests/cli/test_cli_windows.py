"""``overture windows NAME --app MODULE:APP``: open windows and the late count."""

from __future__ import annotations

import asyncio

import pytest
from cli_helpers import REPO_ROOT, Invoke, failed, ok
from tests.streams.stream_app import Tick, app

from overture.testing import Harness

T0 = 1_800_000_000.0


@pytest.fixture
def filled(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))

    async def fill() -> None:
        async with Harness(app, url) as h:
            for sensor, at in [("a", 1), ("a", 2), ("b", 3), ("a", 15), ("a", 4)]:
                h.client.send(Tick(sensor=sensor, at=T0 + at))
            await h.idle()

    asyncio.run(fill())
    return url


def test_windows_prints_the_open_windows_and_late_count(filled: str, invoke: Invoke) -> None:
    out = ok(invoke("windows", "counts", "--app", "tests.streams.stream_app:app"))
    assert "open windows of counts" in out
    assert "n=1" in out  # a's [10, 20) window: the watermark (15) closed [0, 10)
    assert "late events: 1" in out  # a at 4
    out = ok(invoke("windows", "counts", "--app", "tests.streams.stream_app:app", "--key", "b"))
    assert "no open windows of counts for key 'b'" in out


def test_windows_json(filled: str, invoke: Invoke) -> None:
    out = ok(invoke("windows", "counts", "--app", "tests.streams.stream_app:app", "--json"))
    assert out.splitlines()[-1] == '{"late":1}'
    assert '"key":"a"' in out.splitlines()[0]
    assert '"values":{"n":1}' in out.splitlines()[0]


def test_an_unknown_window_is_a_clear_error(filled: str, invoke: Invoke) -> None:
    line = failed(invoke("windows", "nope", "--app", "tests.streams.stream_app:app"))
    assert "no stream operator 'nope'" in line
    assert "known: counts" in line
