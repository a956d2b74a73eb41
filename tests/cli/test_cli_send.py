"""``overture send``: one event, a JSON-lines file, and every way the input can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import Invoke, failed, ok

import overture as ov
from overture.cli import cli


def logged(url: str) -> list[ov.LoggedEvent]:
    with ov.Client(url) as client:
        return client.events()


def test_send_prints_the_event_id_and_publishes_it(invoke: Invoke, url: str) -> None:
    out = ok(invoke("send", "thing.happened", "--data", '{"n": 1}', "--key", "k1"))
    [event] = logged(url)
    assert out.strip() == event.envelope.id  # type: ignore[union-attr]
    assert event.envelope is not None
    assert (event.envelope.type, event.envelope.data, event.envelope.partitionkey) == (
        "thing.happened",
        {"n": 1},
        "k1",
    )


def test_send_without_data_sends_an_empty_object(invoke: Invoke, url: str) -> None:
    ok(invoke("send", "ping"))
    assert logged(url)[0].envelope.data == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"n": ', "--data is not valid JSON"),
        ("not json", "--data is not valid JSON"),
        ("[1, 2]", "--data must be a JSON object, not an array"),
        ('"text"', "--data must be a JSON object, not a string"),
    ],
)
def test_bad_data_is_one_line_and_publishes_nothing(
    invoke: Invoke, url: str, data: str, message: str
) -> None:
    assert message in failed(invoke("send", "thing.happened", "--data", data))
    assert logged(url) == []


def test_app_validates_known_types_and_derives_the_key(
    invoke: Invoke, url: str, orders: ModuleType
) -> None:
    data = '{"order_id": "o-7", "amount": 3}'
    ok(invoke("send", "payment.received", "--data", data, "--app", "examples.orders:app"))
    [event] = logged(url)
    assert event.envelope is not None and event.envelope.partitionkey == "o-7"

    bad = '{"order_id": "o-8", "amount": "lots"}'
    line = failed(invoke("send", "payment.received", "--data", bad, "--app", "examples.orders:app"))
    assert "violates its schema" in line and "amount" in line
    assert len(logged(url)) == 1


def test_app_refuses_a_payment_without_its_key_field(
    invoke: Invoke, url: str, orders: ModuleType
) -> None:
    # payment.received is declared with waits=: without its key field (or --key) no
    # waiting order could ever receive it, so it is refused instead of silently lost.
    line = failed(
        invoke("send", "payment.received", "--data", "{}", "--app", "examples.orders:app")
    )
    assert "order_id" in line and "violates its schema" in line
    assert logged(url) == []


def test_a_keyless_send_without_app_says_what_it_means(invoke: Invoke, url: str) -> None:
    result = invoke("send", "payment.received", "--data", '{"order_id": "o1"}')
    ok(result)
    assert "sent without a key" in result.stderr and "--app" in result.stderr
    assert "sent without a key" not in invoke("send", "x.y", "--key", "k").stderr


@pytest.mark.parametrize(
    ("app_path", "message"),
    [
        ("no_such_module_xyz:app", "cannot import 'no_such_module_xyz'"),
        ("examples.orders:nope", "has no attribute 'nope'"),
        ("examples.orders:STOCK", "is a dict, not an overture.App"),
        ("examples.orders:make_app", "is a function, not an overture.App"),
        ("examples.orders", "must look like MODULE:APP"),
        ("shop.py:app", "names a file; give the module instead: shop:app"),
        ("examples/orders.py:app", "give the module instead: examples.orders:app"),
    ],
)
def test_bad_app_path_is_a_usage_error(
    invoke: Invoke, orders: ModuleType, app_path: str, message: str
) -> None:
    assert message in failed(invoke("send", "x", "--app", app_path), code=2)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["thing", "--file", "events.jsonl"],
        ["--file", "events.jsonl", "--key", "k"],
    ],
)
def test_type_and_file_are_exclusive(invoke: Invoke, args: list[str]) -> None:
    failed(invoke("send", *args), code=2)


def _lines(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def test_file_publishes_every_line_in_chunks(invoke: Invoke, url: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [{"type": "tick", "data": {"n": i}, "key": f"k{i % 7}"} for i in range(2500)]
    path.write_text(_lines(*events[:1200]) + "\n   \n" + _lines(*events[1200:]))
    assert ok(invoke("send", "--file", str(path))).strip() == "published 2500 events"
    found = logged(url)
    assert sorted(e.envelope.data["n"] for e in found) == list(range(2500))  # type: ignore[union-attr]
    assert {e.envelope.partitionkey for e in found} == {f"k{i}" for i in range(7)}  # type: ignore[union-attr]


def test_file_from_stdin_with_ids_is_idempotent(invoke: Invoke, url: str) -> None:
    text = _lines({"type": "a", "id": "evt-1"}, {"type": "b", "data": {"x": 1}, "id": "evt-2"})
    assert ok(invoke("send", "--file", "-", input=text)).strip() == "published 2 events"
    ok(invoke("send", "--file", "-", input=text))  # the log ignores ids it already holds
    assert [e.envelope.id for e in logged(url)] == ["evt-1", "evt-2"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["type", "x"]', "expected a JSON object, got an array"),
        ('{"data": {}}', "'type' is missing"),
        ('{"type": 5}', "'type' is not a non-empty string"),
        ('{"type": ""}', "'type' is not a non-empty string"),
        ('{"type": "x", "data": [1]}', "'data' must be a JSON object, not an array"),
        ('{"type": "x", "data": "s"}', "'data' must be a JSON object, not a string"),
        ('{"type": "x", "key": 3}', "'key' must be a string, not a number"),
        ('{"type": "x", "tipe": "y"}', "unknown field(s) 'tipe'"),
    ],
)
def test_a_bad_line_rejects_the_whole_file(
    invoke: Invoke, url: str, tmp_path: Path, bad: str, reason: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_lines({"type": "good", "data": {}}, {"type": "good"}) + "\n" + bad + "\n")
    line = failed(invoke("send", "--file", str(path)))
    assert line.startswith("error: line 4: ")  # 1-based, counting the blank line
    assert reason in line
    assert "nothing was published" in line
    assert logged(url) == []


def test_schema_violation_in_file_with_app_rejects_the_file(
    invoke: Invoke, url: str, tmp_path: Path, orders: ModuleType
) -> None:
    path = tmp_path / "orders.jsonl"
    good = {"type": "order.placed", "data": {"order_id": "o1", "item": "book", "quantity": 1}}
    bad = {"type": "order.placed", "data": {"order_id": "o2", "item": "book", "quantity": "two"}}
    path.write_text(_lines(good, bad))
    line = failed(invoke("send", "--file", str(path), "--app", "examples.orders:app"))
    assert line.startswith("error: line 2: ") and "quantity" in line
    assert logged(url) == []

    path.write_text(_lines(good))
    ok(invoke("send", "--file", str(path), "--app", "examples.orders:app"))
    [event] = logged(url)
    assert event.envelope is not None and event.envelope.partitionkey == "o1"  # derived key


def test_unreadable_file_is_one_line(invoke: Invoke, tmp_path: Path) -> None:
    assert "No such file" in failed(invoke("send", "--file", str(tmp_path / "missing.jsonl")))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in failed(invoke("send", "--file", str(binary)))


def test_bad_backend_url_is_one_line(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke.runner.invoke(cli, ["send", "x", "--backend", "postgres://nope"])
    assert "unknown backend URL" in failed(result)
