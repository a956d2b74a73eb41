"""The pure pattern matcher against brute-force references over small random sequences
(one key, events in time order, grace 0: the watermark is the newest event time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import overture as ov
from overture.errors import ConfigError
from overture.streams.patterns import PatternOperator

W = 5.0
T0 = 1_800_000_000.0

events = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), max_size=14)


def operator(pattern: ov.Pattern) -> PatternOperator:
    return PatternOperator(
        name="p", pattern=pattern, key="k", grace=0.0, idle=None, time_field=None, classes={}
    )


def run(op: PatternOperator, seq: list[tuple[str, int]], *, close: bool) -> list[list[int]]:
    """Feed the sequence (gaps between events) and return each match's event indexes."""
    state: bytes | None = None
    out: list[list[int]] = []
    t = 0.0
    for i, (kind, gap) in enumerate(seq):
        t += gap
        when = datetime.fromtimestamp(T0 + t, UTC)
        event = ov.Event.of(kind, {"k": "x", "i": i}).with_attributes(time=when, id=f"e{i}")
        step = op.on_event(state, "x", event, T0 + t, T0 + t)
        state = step.state
        out += [[e.data["i"] for es in o.value.events.values() for e in es] for o in step.outputs]
    if close and state is not None:
        step = op.on_watermark(state, "x", T0 + t + 10 * W)
        assert step.state is None  # nothing left once everything expired
        out += [[e.data["i"] for es in o.value.events.values() for e in es] for o in step.outputs]
    return out


def times(seq: list[tuple[str, int]]) -> list[float]:
    acc, result = 0.0, []
    for _, gap in seq:
        acc += gap
        result.append(acc)
    return result


@settings(max_examples=300, deadline=None)
@given(events)
def test_followed_by_within_matches_the_reference(seq: list[tuple[str, int]]) -> None:
    op = operator(ov.begin("a").followed_by("b").within(timedelta(seconds=W)))
    ts = times(seq)
    expected: list[list[int]] = []
    open_a: list[int] = []  # oldest first; each b goes to the oldest a still in time
    for i, (kind, _) in enumerate(seq):
        open_a = [a for a in open_a if ts[i] < ts[a] + W]
        if kind == "b" and open_a:
            expected.append([open_a.pop(0), i])
        elif kind == "a":
            open_a.append(i)
    assert run(op, seq, close=True) == expected


@settings(max_examples=300, deadline=None)
@given(events)
def test_absence_matches_the_reference(seq: list[tuple[str, int]]) -> None:
    op = operator(ov.begin("a").not_followed_by("b").within(timedelta(seconds=W)))
    ts = times(seq)
    # an a fires iff no b arrives after it with a time in [its time, its time + W)
    expected = [
        [i]
        for i, (kind, _) in enumerate(seq)
        if kind == "a"
        and not any(k == "b" and j > i and ts[j] < ts[i] + W for j, (k, _) in enumerate(seq))
    ]
    got = run(op, seq, close=True)
    assert sorted(got) == expected


@settings(max_examples=300, deadline=None)
@given(events)
def test_times_consumes_events_in_groups(seq: list[tuple[str, int]]) -> None:
    op = operator(ov.begin("c").times(3))
    cs = [i for i, (kind, _) in enumerate(seq) if kind == "c"]
    expected = [cs[n : n + 3] for n in range(0, len(cs) - len(cs) % 3, 3)]
    assert run(op, seq, close=False) == expected


def test_state_is_deterministic_json_and_versioned() -> None:
    op = operator(ov.begin("a").followed_by("b").within(timedelta(seconds=W)))
    event = ov.Event.of("a", {"k": "x"}).with_attributes(id="e1")
    one = op.on_event(None, "x", event, T0, T0).state
    two = op.on_event(None, "x", event, T0, T0).state
    assert one == two and one is not None and one.startswith(b'{"p":')
    assert op.wake_at(one) == T0 + W


def test_a_late_event_is_reported_and_changes_nothing() -> None:
    op = operator(ov.begin("a").followed_by("b"))
    step = op.on_event(None, "x", ov.Event.of("a", {"k": "x"}), T0, T0 + 1)
    assert step.late and step.state is None and step.outputs == ()


def test_invalid_patterns_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs within"):
        operator(ov.begin("a").not_followed_by("b"))
    with pytest.raises(ConfigError, match="last stage"):
        ov.begin("a").not_followed_by("b").followed_by("c")
    with pytest.raises(ConfigError, match="times"):
        ov.begin("a").times(0)


def test_absence_fires_exactly_when_the_watermark_reaches_the_deadline() -> None:
    op = operator(ov.begin("a").not_followed_by("b").within(timedelta(seconds=W)))
    state = op.on_event(None, "x", ov.Event.of("a", {"k": "x"}), T0, T0).state
    assert state is not None
    early = op.on_watermark(state, "x", T0 + W - 0.5)
    assert early.outputs == () and early.state == state
    fired = op.on_watermark(state, "x", T0 + W)
    assert fired.state is None and len(fired.outputs) == 1
    assert fired.outputs[0].value.end == datetime.fromtimestamp(T0 + W, UTC)
