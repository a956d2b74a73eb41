"""Every bad request gets its 4xx, a JSON {"error": ...} saying what is wrong, and
writes nothing (the log is unchanged)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Served, serving

BINARY = {"ce-id": "x1", "ce-source": "/t", "ce-type": "order.placed", "ce-specversion": "1.0"}
GOOD = b'{"order_id": "o1", "quantity": 1}'
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


def event(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": "s1",
        "source": "/t",
        "type": "order.placed",
        "data": {"order_id": "o1", "quantity": 1},
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in BINARY.items() if k != name}


CASES: list[tuple[str, str, str, dict[str, str], Any, int, str]] = [
    # (name, method, path, headers, body (bytes or JSON), status, text in the error)
    ("malformed JSON", "POST", "/events", BINARY, b'{"order_id": ', 400, "not valid JSON"),
    ("malformed structured", "POST", "/events", STRUCTURED, b"{nope", 400, "not valid JSON"),
    ("non-UTF-8", "POST", "/events", BINARY, b'{"order_id": "\xff\xfe"}', 400, "not UTF-8"),
    ("missing ce-id", "POST", "/events", without("ce-id"), GOOD, 400, "ce-id"),
    ("missing ce-type", "POST", "/events", without("ce-type"), GOOD, 400, "ce-type"),
    ("missing ce-source", "POST", "/events", without("ce-source"), GOOD, 400, "ce-source"),
    (
        "missing ce-specversion",
        "POST",
        "/events",
        without("ce-specversion"),
        GOOD,
        400,
        "ce-specversion",
    ),
    (
        "wrong ce-specversion",
        "POST",
        "/events",
        {**BINARY, "ce-specversion": "0.3"},
        GOOD,
        400,
        "specversion",
    ),
    (
        "wrong specversion",
        "POST",
        "/events",
        STRUCTURED,
        event(specversion="2.0"),
        400,
        "specversion",
    ),
    ("missing id", "POST", "/events", STRUCTURED, event(id=None), 400, "id"),
    (
        "missing specversion",
        "POST",
        "/events",
        STRUCTURED,
        event(specversion=None),
        400,
        "specversion",
    ),
    ("not an object", "POST", "/events", STRUCTURED, [1], 400, "JSON object"),
    ("batch not an array", "POST", "/events", BATCH, event(), 400, "array"),
    (
        "validation failure",
        "POST",
        "/events",
        BINARY,
        b'{"order_id": "o1", "quantity": "many"}',
        422,
        "quantity",
    ),
    ("missing field", "POST", "/events", STRUCTURED, event(data={"quantity": 1}), 422, "order_id"),
    (
        "invalid batch member",
        "POST",
        "/events",
        BATCH,
        [event(id="b1"), event(id="b2", data={"order_id": 1})],
        422,
        "event 1 of the batch",
    ),
    (
        "duplicate id in batch",
        "POST",
        "/events",
        BATCH,
        [event(id="b1"), event(id="b1")],
        400,
        "already in this batch",
    ),
    (
        "reserved type",
        "POST",
        "/events",
        {**BINARY, "ce-type": "overture.cancel"},
        b'{"instance_id": "x"}',
        403,
        "reserved",
    ),
    (
        "reserved type structured",
        "POST",
        "/events",
        STRUCTURED,
        event(type="overture.dlq.replay", data={"id": "x"}),
        403,
        "reserved",
    ),
    (
        "unknown extension header",
        "POST",
        "/events",
        {**BINARY, "ce-color": "red"},
        GOOD,
        422,
        "ce-color",
    ),
    ("unknown attribute", "POST", "/events", STRUCTURED, event(color="red"), 422, "color"),
    (
        "data_base64",
        "POST",
        "/events",
        STRUCTURED,
        event(data=None, data_base64="AAAA"),
        415,
        "data_base64",
    ),
    (
        "non-JSON content type",
        "POST",
        "/events",
        {**BINARY, "content-type": "text/plain"},
        b"hello",
        415,
        "text/plain",
    ),
    ("bad time", "POST", "/events", STRUCTURED, event(time="yesterday"), 400, "time"),
    ("attribute not a string", "POST", "/events", STRUCTURED, event(subject=5), 400, "subject"),
    (
        "huge integer",
        "POST",
        "/events",
        BINARY,
        b'{"order_id": "o1", "quantity": 123456789012345678901234567890}',
        422,
        "quantity",
    ),
    (
        "start with a batch",
        "POST",
        "/events?start=true",
        BATCH,
        [event(id="b1"), event(id="b2")],
        400,
        "exactly one",
    ),
    ("unknown instance", "GET", "/instances/nosuchinstance", {}, None, 404, "no instance"),
    (
        "unknown instance result",
        "GET",
        "/instances/nosuchinstance/result",
        {},
        None,
        404,
        "no instance",
    ),
    ("cancel unknown", "POST", "/instances/nosuchinstance/cancel", {}, None, 404, "no instance"),
    ("bad cursor", "GET", "/instances?cursor=garbage!", {}, None, 400, "cursor"),
    ("bad cursor JSON", "GET", "/instances?cursor=bm9wZQ", {}, None, 400, "cursor"),
    ("bad status", "GET", "/instances?status=sleepy", {}, None, 400, "status"),
    ("bad time filter", "GET", "/instances?created_after=soon", {}, None, 400, "created_after"),
    ("bad limit", "GET", "/instances?limit=0", {}, None, 400, "limit"),
    ("bad wait", "GET", "/instances/x/result?wait=abc", {}, None, 400, "wait"),
    ("negative wait", "GET", "/instances/x/result?wait=-1", {}, None, 400, "wait"),
    ("too long wait", "GET", "/instances/x/result?wait=301", {}, None, 400, "wait"),
    ("nan wait", "GET", "/instances/x/result?wait=nan", {}, None, 400, "wait"),
    ("unknown dead letter", "GET", "/dead-letters/nope", {}, None, 404, "no dead letter"),
    (
        "replay unknown dead letter",
        "POST",
        "/dead-letters/nope/replay",
        {},
        None,
        404,
        "no dead letter",
    ),
    ("replay unknown ids", "POST", "/dead-letters/replay", {}, {"ids": ["nope"]}, 404, "nope"),
    ("replay neither", "POST", "/dead-letters/replay", {}, {}, 400, "either"),
    (
        "replay bad body",
        "POST",
        "/dead-letters/replay",
        {},
        {"ids": "x", "extra": 1},
        400,
        "replay request",
    ),
    ("bad start", "POST", "/events?start=maybe", BINARY, GOOD, 400, "start"),
    ("unknown query parameter", "POST", "/events?strat=true", BINARY, GOOD, 400, "strat"),
    ("process without start", "POST", "/events?process=fulfil", BINARY, GOOD, 400, "process"),
    ("unknown path", "GET", "/nowhere", {}, None, 404, "Not Found"),
    ("wrong method", "DELETE", "/events", {}, None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_bad_request_is_refused_and_writes_nothing(
    served: Served, case: tuple[str, str, str, dict[str, str], Any, int, str]
) -> None:
    _, method, path, headers, body, status, text = case
    before = served.log_size()
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
        if "content-type" in headers:  # keep the case's content type
            import json

            kwargs = {"headers": headers, "content": json.dumps(body).encode()}
    reply = await served.http.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    answer = reply.json()
    assert text in answer["error"], answer
    assert served.log_size() == before


async def test_a_body_over_the_limit_is_refused_while_it_is_read(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path / 'api.db'}", max_body=1000) as served:
        big = b'{"order_id": "' + b"x" * 2000 + b'", "quantity": 1}'
        reply = await served.http.post("/events", headers=BINARY, content=big)
        assert reply.status_code == 413, reply.text
        assert "1000 bytes" in reply.json()["error"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"order_id": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'", "quantity": 1}'

        reply = await served.http.post("/events", headers=BINARY, content=chunked())
        assert reply.status_code == 413, reply.text
        small = b'{"order_id": "o", "quantity": 1}'
        reply = await served.http.post("/events", headers=BINARY, content=small)
        assert reply.status_code == 202
        assert served.log_size() == 1
