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


async def test_delete_one_several_or_all_dead_letters(served: Served) -> None:
    with ov.Client(served.backend) as client:
        for n in range(4):
            client.send_raw(f"not an event {n}".encode())
    ids = sorted(letter["id"] for letter in await letters(served, 4))

    reply = await served.http.delete(f"/dead-letters/{ids[0]}", params={"reason": "junk"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"deleted": [ids[0]], "requests": []}
    assert (await served.http.get(f"/dead-letters/{ids[0]}")).status_code == 404
    reply = await served.http.delete(f"/dead-letters/{ids[0]}")
    assert reply.status_code == 404
    assert repr(ids[0]) in reply.json()["error"]

    # all or none: an unknown id deletes nothing
    reply = await served.http.post("/dead-letters/delete", json={"ids": [ids[1], "nope"]})
    assert reply.status_code == 404
    assert "'nope'" in reply.json()["error"] and "nothing was deleted" in reply.json()["error"]
    assert len(await letters(served, 3)) == 3
    for body in ({}, {"ids": [ids[1]], "all": True}, {"ids": [""]}, {"ids": "x"}, {"x": 1}):
        reply = await served.http.post("/dead-letters/delete", json=body)
        assert reply.status_code == 400, (body, reply.text)
    assert len(await letters(served, 3)) == 3

    reply = await served.http.post("/dead-letters/delete", json={"ids": [ids[1], ids[2]]})
    assert reply.status_code == 200 and reply.json()["deleted"] == [ids[1], ids[2]]
    reply = await served.http.post("/dead-letters/delete", json={"all": True, "reason": "x"})
    assert reply.status_code == 200 and reply.json()["deleted"] == [ids[3]]
    assert (await served.http.get("/dead-letters")).json() == {"dead_letters": []}
