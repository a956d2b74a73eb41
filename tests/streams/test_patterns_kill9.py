"""kill -9 of a real ``overture run`` on SQLite, at random moments while patterns match:
afterwards every match was emitted exactly once and no event was used twice."""

from __future__ import annotations

import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

import overture as ov

from ..engine_process import PACE, kill_while_producing, overture_run

T0 = 1_800_000_000.0
PAIRS = 3000
KEYS = 30


def start_engine(url: str, log: Path) -> subprocess.Popen[bytes]:
    return overture_run(
        "tests.streams.pattern_app:app", url, log, "--batch-size", "40", env={PACE: "0.002"}
    )


def results(client: ov.Client) -> list[ov.LoggedEvent]:
    return client.events(type="order.paired", limit=10 * PAIRS)


@pytest.mark.timeout(240)
def test_kill_9_mid_stream_emits_each_match_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    log = tmp_path / "engine.log"
    rng = random.Random(7)
    events: list[ov.Event] = []
    expected: set[tuple[str, int, int]] = set()
    open_of: dict[str, int] = {}
    for i in range(2 * PAIRS):
        key = f"k{rng.randrange(KEYS)}"
        when = datetime.fromtimestamp(T0 + i * 0.1, UTC)
        if key in open_of:
            expected.add((key, open_of.pop(key), i))
            kind = "order.closed"
        else:
            open_of[key] = i
            kind = "order.opened"
        events.append(ov.Event.of(kind, {"k": key, "i": i}).with_attributes(time=when))
    with ov.Client(url) as client:
        for start in range(0, len(events), 500):
            client.send_many(client.envelope(e) for e in events[start : start + 500])
        kills, code = kill_while_producing(
            lambda: start_engine(url, log), log, lambda: len(results(client)), len(expected), rng
        )
        assert code == 0, log.read_text()[-3000:]
        assert kills >= 3, f"only {kills} kills landed mid-stream"
        emitted = results(client)
        got = set()
        for event in emitted:
            assert event.envelope is not None
            data = event.envelope.data
            got.add((data["k"], data["opened"], data["closed"]))
        assert len(emitted) == len(expected), "a match was emitted twice or lost"
        assert got == expected
        assert client.dead_letters() == []
