"""kill -9 of a real ``overture run`` on SQLite, at random moments while windows close:
afterwards every window's result was emitted exactly once, with the exact count."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import overture as ov

from ..engine_process import PACE, kill_while_producing, overture_run
from .stream_app import Tick

T0 = 1_800_000_000.0
EVENTS = 6000
KEYS = 30


def start_engine(url: str, log: Path) -> subprocess.Popen[bytes]:
    return overture_run(
        "tests.streams.stream_app:app", url, log, "--batch-size", "40", env={PACE: "0.003"}
    )


def results(client: ov.Client) -> list[ov.LoggedEvent]:
    return client.events(type="window.counted", limit=10 * EVENTS)


@pytest.mark.timeout(240)
def test_kill_9_mid_stream_emits_each_window_once_with_exact_counts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    log = tmp_path / "engine.log"
    rng = random.Random(7)
    ticks = [(f"k{rng.randrange(KEYS)}", T0 + i * 0.1) for i in range(EVENTS)]
    expected = Counter((key, (at - T0) // 10 * 10 + T0) for key, at in ticks)
    with ov.Client(url) as client:
        for start in range(0, EVENTS, 500):
            client.send_many(
                client.envelope(Tick(sensor=k, at=at)) for k, at in ticks[start : start + 500]
            )
        client.send(Tick(sensor="flush", at=T0 + 10 * EVENTS))  # closes every window
        kills, code = kill_while_producing(
            lambda: start_engine(url, log), log, lambda: len(results(client)), len(expected), rng
        )
        assert code == 0, log.read_text()[-3000:]
        assert kills >= 3, f"only {kills} kills landed mid-stream"
        emitted = results(client)
        got = Counter()
        for event in emitted:
            assert event.envelope is not None
            data = event.envelope.data
            got[(data["key"], data["start"])] += data["n"]
        assert len(emitted) == len(expected), "a window's result was emitted twice or lost"
        assert len({e.envelope.id for e in emitted if e.envelope}) == len(emitted)
        assert got == expected
        assert client.dead_letters() == []
