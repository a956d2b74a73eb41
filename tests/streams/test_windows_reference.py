"""Window semantics against a reference computed in plain Python over the same events:
random events, arriving out of order within the grace and late beyond it, sessions that
merge; every window's result must be exactly the reference's, emitted once."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import overture as ov
from overture.testing import Harness

T0 = 1_800_000_000
GRACE = 3
FLUSH = "~flush"  # a key whose far-future event closes every other window

# (key, seconds after T0, amount): times jitter, so events arrive out of order
events_st = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 60), st.integers(1, 9)),
    min_size=1,
    max_size=40,
)


def reference_fixed(
    events: list[tuple[str, int, int]], size: int, every: int
) -> tuple[set[tuple[Any, ...]], int]:
    """Tumbling (every == size) and hopping windows, as a user would define them."""
    wm = -math.inf
    windows: dict[tuple[str, int], list[int]] = {}
    late = 0
    for key, t, amount in events:
        wm = max(wm, t - GRACE)
        starts = [s for s in range(t - size + 1, t + 1) if s % every == 0]
        open_ = [s for s in starts if s + size > wm]
        if not open_:
            late += 1
        for s in open_:
            windows.setdefault((key, s), []).append(amount)
    results = {(k, s, s + size, len(v), sum(v)) for (k, s), v in windows.items()}
    return results, late


def reference_sessions(
    events: list[tuple[str, int, int]], gap: int
) -> tuple[set[tuple[Any, ...]], int]:
    """Sessions: chains of events closer than ``gap``; a closed session is final."""
    wm = -math.inf
    sessions: dict[str, list[list[tuple[int, int]]]] = {}  # key -> open sessions' events
    done: set[tuple[Any, ...]] = set()
    late = 0

    def close(key: str) -> None:
        for s in list(sessions.get(key, [])):
            if max(t for t, _ in s) + gap <= wm:
                sessions[key].remove(s)
                times = [t for t, _ in s]
                done.add((key, min(times), max(times) + gap, len(s), sum(a for _, a in s)))

    for key, t, amount in events:
        wm = max(wm, t - GRACE)
        close(key)
        near = [s for s in sessions.get(key, []) if any(abs(t - u) < gap for u, _ in s)]
        if not near and t + gap <= wm:
            late += 1
            continue
        merged = [(t, amount)]
        for s in near:
            sessions[key].remove(s)
            merged += s
        sessions.setdefault(key, []).append(merged)
    wm = math.inf
    for key in list(sessions):
        close(key)
    return done, late


def reference_sliding(
    events: list[tuple[str, int, int]], size: int
) -> tuple[set[tuple[Any, ...]], int]:
    """A window per event, over the key's events of (t - size, t] that arrived before it
    closed (the watermark reaching t)."""
    wm = -math.inf
    accepted: list[tuple[int, str, int, int]] = []  # (arrival, key, t, amount)
    windows: dict[tuple[str, int], int] = {}  # (key, end) -> arrival index it closed at
    late = 0
    for i, (key, t, amount) in enumerate(events):
        wm = max(wm, t - GRACE)
        for w, closed in windows.items():
            if closed == -1 and w[1] <= wm:
                windows[w] = i
        own = t > wm
        containing = [
            w for w, c in windows.items() if c == -1 and w[0] == key and w[1] - size < t <= w[1]
        ]
        if not own and not containing:
            late += 1
            continue
        accepted.append((i, key, t, amount))
        if own and (key, t) not in windows:
            windows[(key, t)] = -1
    results = set()
    for (key, end), closed in windows.items():
        limit = len(events) if closed == -1 else closed
        mine = [a for i, k, t, a in accepted if k == key and end - size < t <= end and i < limit]
        results.add((key, end - size, end, len(mine), sum(mine)))
    return results, late


def run(events: list[tuple[str, int, int]], window: Any) -> tuple[set[tuple[Any, ...]], int, int]:
    """The same events through an engine: (results, late count, results emitted)."""
    app = ov.App("ref")
    got: list[tuple[Any, ...]] = []

    @app.window(
        source="amount",
        key="k",
        window=window,
        aggregate={"n": ov.Count(), "sum": ov.Sum("amount")},
        grace=timedelta(seconds=GRACE),
        time_field="t",
        idle=None,
    )
    def windows(r: ov.WindowResult) -> ov.Event:
        if r.key != FLUSH:
            start, end = r.start.timestamp() - T0, r.end.timestamp() - T0
            got.append((r.key, int(start), int(end), r.values["n"], r.values["sum"]))
        return ov.Event.of("window.closed", {"key": r.key, "n": r.values["n"]})

    async def go() -> tuple[int, int]:
        async with Harness(app) as h:
            for key, t, amount in events:
                h.client.send(ov.Event.of("amount", {"k": key, "t": T0 + t, "amount": amount}))
            h.client.send(ov.Event.of("amount", {"k": FLUSH, "t": T0 + 10_000, "amount": 0}))
            await h.idle()
            emitted = len(h.client.events(type="window.closed"))
            return h.client.late_events("windows"), emitted

    late, emitted = asyncio.run(go())
    return set(got), late, emitted


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(events_st)
@example([("a", 1, 1), ("a", 13, 1), ("a", 9, 1)])  # watermark exactly at the end: late
def test_tumbling_matches_the_reference(events: list[tuple[str, int, int]]) -> None:
    expected, late = reference_fixed(events, 10, 10)
    got, got_late, emitted = run(events, ov.Tumbling(timedelta(seconds=10)))
    assert got == expected
    assert got_late == late
    assert emitted == len(expected)  # once each (the flush key's window is still open)


@SETTINGS
@given(events_st)
@example([("a", 1, 1), ("a", 13, 1), ("a", 9, 1), ("a", 12, 1)])
def test_hopping_matches_the_reference(events: list[tuple[str, int, int]]) -> None:
    expected, late = reference_fixed(events, 10, 5)
    got, got_late, emitted = run(events, ov.Hopping(timedelta(seconds=10), timedelta(seconds=5)))
    assert got == expected
    assert got_late == late
    assert emitted == len(expected)


@SETTINGS
@given(events_st)
@example([("a", 0, 1), ("a", 6, 2), ("a", 3, 4)])  # 3 bridges [0, 4) and [6, 10)
def test_sessions_match_the_reference(events: list[tuple[str, int, int]]) -> None:
    expected, late = reference_sessions(events, 4)
    got, got_late, emitted = run(events, ov.Session(timedelta(seconds=4)))
    assert got == expected
    assert got_late == late
    assert emitted == len(expected)


@SETTINGS
@given(events_st)
@example([("a", 10, 1), ("a", 20, 1), ("a", 16, 1), ("a", 19, 1)])
def test_sliding_matches_the_reference(events: list[tuple[str, int, int]]) -> None:
    expected, late = reference_sliding(events, 5)
    got, got_late, emitted = run(events, ov.Sliding(timedelta(seconds=5)))
    assert got == expected
    assert got_late == late
    assert emitted == len(expected)
