"""Review of round 1: a binary-mode header whose percent-encoding is not UTF-8 is refused
(400, nothing written) instead of being stored with U+FFFD in place of its bytes."""

from __future__ import annotations

import pytest

from .conftest import Served

BINARY = {"ce-id": "x1", "ce-source": "/t", "ce-type": "order.placed", "ce-specversion": "1.0"}
GOOD = b'{"order_id": "o1", "quantity": 1}'


@pytest.mark.parametrize("header", ["ce-subject", "ce-id", "ce-partitionkey"])
async def test_a_header_percent_encoding_no_utf8_is_refused(served: Served, header: str) -> None:
    before = served.log_size()
    headers = {**BINARY, header: "o-%FF%FE"}
    reply = await served.http.post("/events", headers=headers, content=GOOD)
    assert reply.status_code == 400, reply.text
    assert header in reply.json()["error"] and "UTF-8" in reply.json()["error"]
    assert served.log_size() == before
