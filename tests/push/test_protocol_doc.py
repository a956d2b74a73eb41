"""docs/protocol.md's examples are what the code does: the request parses as a task
request, the result examples are what ``tasks.completed`` / ``tasks.failed`` build from
it, the push example's signature is the Standard Webhooks signature of its body (and the
page's JavaScript verifier accepts it), the names are ``protocol.py``'s."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from overture import protocol, tasks
from overture.codec import Codec
from overture.push import CONTENT_TYPE

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def example(name: str) -> str:
    """The fenced block after ``<!-- example: name -->``."""
    match = re.search(rf"<!-- example: {name} -->\n```[a-z]*\n(.*?)\n```", DOC, re.S)
    assert match, f"docs/protocol.md has no example {name!r}"
    return match.group(1)


def _request() -> tuple[Any, protocol.TaskRequest, bytes]:
    raw = orjson.dumps(json.loads(example("request")))
    envelope, message = tasks.parse_request(Codec(), raw)
    return envelope, message, raw


def test_the_request_example_is_a_task_request() -> None:
    envelope, message, _ = _request()
    assert envelope.type == protocol.TASK_REQUESTED
    assert envelope.id == protocol.task_attempt_id(
        message.instance_id, message.seq, message.attempt
    )
    assert envelope.subject == message.task
    assert f"`{envelope.id}`" in DOC and f"`{protocol.task_result_id(envelope.id)}`" in DOC
    documented = set(re.findall(r"^\| `([a-z_.]+)` \| ", DOC, re.M))
    fields = set(protocol.TaskRequest.model_fields) - {"reply"}
    assert fields | {"reply.partitionkey", "reply.partition"} <= documented


@pytest.mark.parametrize("kind", ["completed", "failed"])
def test_the_result_examples_are_what_a_worker_builds(kind: str) -> None:
    envelope, message, _ = _request()
    shown = json.loads(example(kind))
    data = shown["data"]
    if kind == "completed":
        record = tasks.completed(Codec(), envelope, message, data["output"])
    else:
        error = data["error"]
        record = tasks.failed(
            Codec(),
            envelope,
            message,
            error["type"],
            error["message"],
            retryable=data["retryable"],
        )
    built = orjson.loads(record.value)
    assert built.pop("time") and shown.pop("time")
    assert built == shown
    assert (record.key, record.partition) == (
        message.reply.partitionkey,
        message.reply.partition,
    )
    model = protocol.parse_control(shown["type"], data)
    assert set(type(model).model_fields) == set(data)


def _push_example() -> tuple[dict[str, str], bytes]:
    head, body = example("push").split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    return headers, body.encode()


def test_the_push_example_is_signed_per_standard_webhooks() -> None:
    envelope, _, raw = _request()
    headers, body = _push_example()
    assert body == raw == Codec().to_bytes(envelope), "the body is the request as published"
    assert headers["content-type"] == CONTENT_TYPE
    assert headers["webhook-id"] == envelope.id
    at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    assert headers["webhook-signature"] == Webhook(SECRET).sign(envelope.id, at, body.decode())


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_pages_javascript_verifier_accepts_the_example_and_nothing_else(
    tmp_path: Path,
) -> None:
    headers, body = _push_example()
    script = tmp_path / "verify.mjs"
    now = int(headers["webhook-timestamp"]) * 1000
    script.write_text(
        example("verify-js")
        + f"""
Date.now = () => {now};
const headers = {json.dumps(headers)};
const body = {json.dumps(body.decode())};
console.log(JSON.stringify([
  verify({json.dumps(SECRET)}, headers, body),
  verify({json.dumps(SECRET)}, headers, body.replace("4599", "4600")),
  verify("whsec_" + Buffer.alloc(24, 7).toString("base64"), headers, body),
  verify({json.dumps(SECRET)}, {{...headers, "webhook-id": headers["webhook-id"] + "x"}}, body),
]));
Date.now = () => {now} + 301000;
console.log(JSON.stringify(verify({json.dumps(SECRET)}, headers, body)));
"""
    )
    out = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["[true,false,false,false]", "false"]


def test_the_kafka_example_names_protocols_topics_and_the_reply() -> None:
    _, message, _ = _request()
    text = example("kafka")
    queue = message.queue
    assert f"topic {protocol.tasks_topic('shop', queue)} " in text
    assert f"group {protocol.worker_group('shop', queue)} " in text
    assert f"topic {protocol.events_topic('shop')}  partition {message.reply.partition}\n" in text
    assert f"key   {message.reply.partitionkey}\n" in text
    for name in ("shop.tasks.<queue>", "<ns>.tasks.<queue>", "<ns>.workers.<queue>"):
        assert name.replace("shop", "<ns>") in DOC
