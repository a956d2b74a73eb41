"""The dead-letter routes: list and show with the original bytes, replay one or many."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import overture as ov

from .conftest import Served


async def letters(served: Served, count: int) -> list[dict[str, Any]]:
    for _ in range(2000):
        reply = await served.http.get("/dead-letters")
        assert reply.status_code == 200
        found = list(reply.json()["dead_letters"])
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("no dead letters")


async def test_list_show_and_replay_dead_letters(served: Served) -> None:
    with ov.Client(served.backend) as client:
        client.send_raw(b"\xff not an event")  # undecodable: kept as it arrived
        client.send("note.added", {"text": "fail"}, id="n-fail")  # its handler refuses it
    found = await letters(served, 2)
    by_source = {letter["source"]: letter for letter in found}
    decode = by_source["decode"]
    assert decode["value_encoding"] == "base64"
    assert base64.b64decode(decode["value"]) == b"\xff not an event"
    handler = next(v for k, v in by_source.items() if k.startswith("handler:"))
    assert handler["value_encoding"] == "utf-8"
    assert '"n-fail"' in handler["value"]
    one = await served.http.get(f"/dead-letters/{decode['id']}")
    assert one.status_code == 200
    assert one.json() == decode

    before = served.log_size()
    reply = await served.http.post(f"/dead-letters/{handler['id']}/replay")
    assert reply.status_code == 202, reply.text
    assert reply.json()["requested"][0]["id"] == handler["id"]
    assert served.log_size() == before + 1  # the replay request

    reply = await served.http.post("/dead-letters/replay", json={"ids": [decode["id"], "nope"]})
    assert reply.status_code == 404
    assert reply.json()["ids"] == ["nope"]
    assert served.log_size() == before + 1  # all or nothing: none was requested

    reply = await served.http.post("/dead-letters/replay", json={"all": True})
    assert reply.status_code == 202, reply.text
    assert {r["id"] for r in reply.json()["requested"]} <= {decode["id"], handler["id"]}
    assert served.log_size() > before + 1
