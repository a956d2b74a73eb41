"""``overture send`` refuses what the engine would dead-letter or must not receive, and no
command pretends to work on a ``memory://`` broker (issue 9, section 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import Invoke, failed, ok

import overture as ov


def logged(url: str) -> list[ov.LoggedEvent]:
    with ov.Client(url) as client:
        return client.events()


def test_a_reserved_type_needs_the_reserved_flag(invoke: Invoke, url: str) -> None:
    line = failed(invoke("send", "overture.wait.subscribe", "--data", "{}"))
    assert "reserved for control events" in line and "--reserved" in line
    assert logged(url) == []


def test_a_reserved_type_with_the_flag_is_validated_like_the_engine_does(
    invoke: Invoke, url: str
) -> None:
    line = failed(invoke("send", "overture.wait.subscribe", "--data", "{}", "--reserved"))
    assert "'overture.wait.subscribe' has invalid data" in line and "home" in line
    assert logged(url) == []
    ok(invoke("send", "overture.cancel", "--data", '{"instance_id": "abc"}', "--reserved"))
    assert [e.envelope.type for e in logged(url) if e.envelope] == ["overture.cancel"]


def test_a_file_with_a_reserved_type_publishes_nothing_without_the_flag(
    invoke: Invoke, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"type": "thing.happened"}\n{"type": "overture.cancel", "data": {"instance_id": "x"}}\n'
    )
    line = failed(invoke("send", "--file", str(path)))
    assert "line 2" in line and "reserved" in line
    assert logged(url) == []
    assert "published 2 events" in ok(invoke("send", "--file", str(path), "--reserved"))


@pytest.mark.parametrize(
    ("event_type", "message"),
    [
        ("", "empty"),
        ("order placed", "U+0020 (whitespace) at position 5"),
        ("order.placed\t", "U+0009 (whitespace) at position 12"),
        ("order\x00placed", "U+0000 at position 5"),
        ("x" * 257, "longer than 256 characters"),
    ],
)
def test_an_invalid_type_is_refused_and_publishes_nothing(
    invoke: Invoke, url: str, tmp_path: Path, event_type: str, message: str
) -> None:
    if "\x00" not in event_type:  # a NUL cannot be passed in argv
        assert message in failed(invoke("send", event_type))
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"type": event_type}) + "\n")
    line = failed(invoke("send", "--file", str(path)))
    assert "line 1" in line and message in line
    assert logged(url) == []


@pytest.mark.parametrize(
    "args",
    [
        ("send", "thing.happened"),
        ("events",),
        ("instances",),
        ("show", "abcdef"),
        ("cancel", "abcdef"),
        ("dlq", "list"),
        ("dlq", "replay", "--all"),
        ("run", "examples.orders:app"),
    ],
)
def test_a_memory_broker_is_refused_outside_the_demo(args: tuple[str, ...]) -> None:
    result = Invoke("memory://")(*args)
    line = failed(result, code=2)
    assert "each overture command is its own process" in line
    assert "lost" in line


# -- numbers and text survive exactly or are refused -----------------------------------------

BIG = 2**64  # one past what 64 bits carry


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (f'{{"order": {{"amount": {BIG}}}}}', f"data.order.amount: the integer {BIG} is outside"),
        (f'{{"n": [1, -{BIG}]}}', "data.n[1]: the integer -18446744073709551616 is outside"),
        ('{"n": NaN}', "NaN is not a JSON number"),
        ('{"n": -Infinity}', "-Infinity is not a JSON number"),
        ('{"n": 1e400}', "data.n: inf is not a JSON number"),
    ],
)
def test_numbers_that_would_not_survive_are_refused_naming_the_field(
    invoke: Invoke, url: str, tmp_path: Path, data: str, message: str
) -> None:
    assert message in failed(invoke("send", "thing.happened", "--data", data))
    path = tmp_path / "events.jsonl"
    path.write_text(f'{{"type": "thing.happened", "data": {data}}}\n')
    line = failed(invoke("send", "--file", str(path)))
    assert "line 1" in line and message in line
    assert logged(url) == []


def test_numbers_at_the_edges_and_any_text_survive_exactly(
    invoke: Invoke, url: str, tmp_path: Path
) -> None:
    data = {
        "max": 2**64 - 1,
        "min": -(2**63),
        "float": 0.1,
        "text": "a\u2028b\u2029c\u0085d\x1ce\u000bf",  # splitlines would cut this line
    }
    ok(invoke("send", "thing.happened", "--data", json.dumps(data)))
    path = tmp_path / "events.jsonl"
    path.write_text(
        json.dumps({"type": "thing.happened", "data": data}, ensure_ascii=False) + "\r\n",
        encoding="utf-8",
        newline="",
    )
    assert "published 1 event" in ok(invoke("send", "--file", str(path)))
    line = json.dumps({"type": "thing.happened", "data": data}, ensure_ascii=False)
    assert "published 1 event" in ok(invoke("send", "--file", "-", input=line + "\n"))
    assert [e.envelope.data for e in logged(url) if e.envelope] == [data, data, data]
