"""``overture dlq list`` and ``overture dlq replay`` with an engine driven in-process."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cli_helpers import Invoke, failed, ok

import overture as ov
from overture.testing import Harness


@pytest.fixture
def url(sqlite_and_kafka_url: str) -> str:
    """These commands show the same on SQLite and Kafka."""
    return sqlite_and_kafka_url


def flaky_app(flag: Path, done: Path) -> ov.App:
    """A handler that fails (without retrying) until ``flag`` exists."""
    app = ov.App("flaky")

    @app.on("thing.happened", retry=ov.Retry(max_attempts=1), name="record")
    def record(event: ov.Event) -> None:
        if not flag.exists():
            raise RuntimeError(f"flag file {flag.name} is missing")
        done.write_text(json.dumps(event.data))

    return app


async def test_dlq_list_shows_a_malformed_record(invoke: Invoke, url: str) -> None:
    async with Harness(ov.App("empty"), url) as h:
        position = h.client.send_raw(b"not json", key="k1")
        await h.idle()

    [letter] = [json.loads(line) for line in ok(invoke("dlq", "list", "--json")).splitlines()]
    assert letter["id"] == f"{position[0]}:{position[1]}"
    assert letter["source"] == "decode" and letter["reason"].startswith("not JSON")
    assert letter["value"] == "not json" and letter["key"] == "k1"
    assert letter["event_type"] is None and letter["attempts"] == 0

    table = ok(invoke("dlq", "list"))
    assert letter["id"] in table and "decode" in table and "not json" in table


async def test_dlq_and_events_json_give_back_bytes_that_are_not_text(
    invoke: Invoke, url: str
) -> None:
    raw = b"\xff\xfe\x00 not json \xe2\x80"
    async with Harness(ov.App("empty"), url) as h:
        h.client.send_raw(raw, key="k1")
        await h.idle()

    out = ok(invoke("dlq", "list", "--json"))
    assert "\ufffd" not in out  # no replacement characters
    [letter] = [json.loads(line) for line in out.splitlines()]
    assert letter["value_encoding"] == "base64"
    assert base64.b64decode(letter["value"]) == raw
    if url.startswith("kafka:"):  # the record as it arrived: key and (no) headers too
        assert (letter["record_key"], letter["record_key_encoding"]) == ("k1", "utf-8")
        assert letter["headers"] == []
    else:
        assert letter["record_key"] is None and letter["headers"] is None
    assert "\\xff\\xfe\\x00 not json \\xe2\\x80" in ok(invoke("dlq", "list"))
    [event] = [json.loads(line) for line in ok(invoke("events", "--json")).splitlines()]
    assert event["raw_encoding"] == "base64" and base64.b64decode(event["raw"]) == raw


def test_empty_dlq(invoke: Invoke, url: str) -> None:
    with ov.Client(url):
        pass
    assert ok(invoke("dlq", "list")).strip() == "the dead-letter queue is empty"
    assert ok(invoke("dlq", "list", "--json")) == ""


async def test_replay_a_failed_handler_once_it_can_succeed(
    invoke: Invoke, url: str, tmp_path: Path
) -> None:
    flag, done = tmp_path / "flag", tmp_path / "done.json"
    async with Harness(flaky_app(flag, done), url) as h:
        event_id = ok(invoke("send", "thing.happened", "--data", '{"n": 42}')).strip()
        await h.idle()
        assert not done.exists()

        [letter] = [json.loads(line) for line in ok(invoke("dlq", "list", "--json")).splitlines()]
        assert letter["source"] == "handler:record"
        assert letter["reason"] == "RuntimeError: flag file flag is missing"
        assert letter["attempts"] == 1 and letter["event_type"] == "thing.happened"
        original = json.loads(letter["value"])
        assert original["id"] == event_id and original["data"] == {"n": 42}

        # Replaying while the cause persists parks it again, with the same reason.
        ok(invoke("dlq", "replay", letter["id"]))
        await h.idle()
        [again] = h.client.dead_letters()
        assert again.id == letter["id"] and not done.exists()

        flag.touch()
        out = ok(invoke("dlq", "replay", letter["id"]))
        assert f"replay of dead letter {letter['id']} requested" in out
        await h.idle()
        assert json.loads(done.read_text()) == {"n": 42}
        assert h.client.dead_letters() == []


async def test_replay_all(invoke: Invoke, url: str, tmp_path: Path) -> None:
    flag, done = tmp_path / "flag", tmp_path / "done.json"
    async with Harness(flaky_app(flag, done), url) as h:
        for n in range(3):
            h.client.send("thing.happened", {"n": n})
        await h.idle()
        assert len(h.client.dead_letters()) == 3
        flag.touch()
        assert ok(invoke("dlq", "replay", "--all")).strip() == "replay of 3 dead letters requested"
        await h.idle()
        assert h.client.dead_letters() == []
        assert done.exists()


def test_replay_usage_and_unknown_id(invoke: Invoke, url: str) -> None:
    with ov.Client(url):
        pass
    assert "no dead letter 'nope'" in failed(invoke("dlq", "replay", "nope"))
    failed(invoke("dlq", "replay"), code=2)
    failed(invoke("dlq", "replay", "x", "--all"), code=2)
    assert ok(invoke("dlq", "replay", "--all")).strip() == "replay of 0 dead letters requested"
