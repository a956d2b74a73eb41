"""The instance routes: filters, cursor pages stable under inserts, the timeline, cancel,
and the result long poll woken by the commit that finishes the instance."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import overture as ov

from .conftest import Served


async def start(served: Served, order_id: str, quantity: int = 1) -> str:
    reply = await served.http.post(
        "/events?start=true",
        headers={
            "ce-id": f"ev-{order_id}",
            "ce-source": "/t",
            "ce-type": "order.placed",
            "ce-specversion": "1.0",
        },
        json={"order_id": order_id, "quantity": quantity},
    )
    assert reply.status_code == 202, reply.text
    [instance_id] = reply.json()["instances"]
    return str(instance_id)


async def settled(served: Served, instance_id: str, status: str) -> dict[str, Any]:
    for _ in range(2000):
        reply = await served.http.get(f"/instances/{instance_id}")
        if reply.status_code == 200 and reply.json()["instance"]["status"] == status:
            return dict(reply.json())
        await asyncio.sleep(0.01)
    raise AssertionError(f"{instance_id} never became {status}")


async def test_list_filters_by_process_status_key_and_time(served: Served) -> None:
    done = await start(served, "small", 1)
    waiting = await start(served, "large", 500)
    await settled(served, done, "completed")
    await settled(served, waiting, "waiting")

    async def ids(**params: Any) -> list[str]:
        reply = await served.http.get("/instances", params=params)
        assert reply.status_code == 200, reply.text
        return [i["id"] for i in reply.json()["instances"]]

    assert await ids() == [done, waiting]
    assert await ids(status="completed") == [done]
    assert await ids(status="waiting") == [waiting]
    assert await ids(key="large") == [waiting]
    assert await ids(process="fulfil", key="small") == [done]
    assert await ids(process="other") == []
    created = (await served.http.get(f"/instances/{waiting}")).json()["instance"]["created"]
    assert await ids(created_after=created) == [waiting]
    assert await ids(created_before=created) == [done]


async def started(served: Served, order_id: str) -> str:
    """Start one instance and wait until it is stored: instances list in the order they
    were created, and ones the engine starts in the same batch share a creation time
    (they then list by id), so the test's order is made certain by one batch each."""
    instance_id = await start(served, order_id)
    await settled(served, instance_id, "completed")
    return instance_id


async def test_cursor_pages_are_stable_under_inserts(served: Served) -> None:
    first = [await started(served, f"p{n}") for n in range(5)]
    reply = await served.http.get("/instances", params={"limit": 2})
    page = reply.json()
    assert [i["id"] for i in page["instances"]] == first[:2]
    cursor = page["next_cursor"]
    assert isinstance(cursor, str)
    later = [await started(served, f"q{n}") for n in range(2)]  # inserted between two pages
    seen = list(first[:2])
    while cursor is not None:
        reply = await served.http.get("/instances", params={"limit": 2, "cursor": cursor})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        seen += [i["id"] for i in page["instances"]]
        cursor = page["next_cursor"]
    assert seen == first + later  # nothing twice, nothing skipped, new ones at the end


async def test_show_has_the_row_and_the_timeline(served: Served) -> None:
    instance_id = await start(served, "tl", 2)
    body = await settled(served, instance_id, "completed")
    assert body["instance"]["result"] == {"order": "tl", "shipped": 2}
    assert body["instance"]["key"] == "tl"
    kinds = [entry["kind"] for entry in body["timeline"]]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert body["timeline"][0]["text"] == "started by order.placed (ev-tl)"
    short = instance_id[-8:]  # a unique suffix works, as in `overture show`
    again = await served.http.get(f"/instances/{short}")
    assert again.json()["instance"]["id"] == instance_id


async def test_cancel_a_waiting_instance_then_a_finished_one_is_a_conflict(
    served: Served,
) -> None:
    instance_id = await start(served, "c1", 500)
    await settled(served, instance_id, "waiting")
    reply = await served.http.post(f"/instances/{instance_id}/cancel")
    assert reply.status_code == 202, reply.text
    assert reply.json()["id"] == instance_id
    result = await served.http.get(f"/instances/{instance_id}/result", params={"wait": 20})
    assert result.status_code == 200
    assert result.json()["status"] == "cancelled"
    before = served.log_size()
    again = await served.http.post(f"/instances/{instance_id}/cancel")
    assert again.status_code == 409, again.text
    assert "already cancelled" in again.json()["error"]
    assert served.log_size() == before


async def test_result_long_poll_is_woken_by_the_commit(served: Served) -> None:
    instance_id = await start(served, "lp", 500)
    await settled(served, instance_id, "waiting")
    poll = asyncio.create_task(
        served.http.get(f"/instances/{instance_id}/result", params={"wait": 30})
    )
    await asyncio.sleep(0.3)
    assert not poll.done()  # it waits...
    sent = time.monotonic()
    with ov.Client(served.backend, app=served.host.app if served.host else None) as client:
        client.send("order.approved", {"order_id": "lp"}, key="lp")
    reply = await poll
    latency = time.monotonic() - sent
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "id": instance_id,
        "status": "completed",
        "finished": True,
        "result": {"order": "lp", "shipped": 500},
        "error": None,
    }
    assert latency < 2  # ...until the commit, far sooner than the 30 s wait


async def test_result_still_running_at_the_timeout_is_202(served: Served) -> None:
    instance_id = await start(served, "slow", 500)
    await settled(served, instance_id, "waiting")
    began = time.monotonic()
    reply = await served.http.get(f"/instances/{instance_id}/result", params={"wait": 0.5})
    assert time.monotonic() - began >= 0.45
    assert reply.status_code == 202, reply.text
    assert reply.json()["finished"] is False
    assert reply.json()["status"] == "waiting"
    now = await served.http.get(f"/instances/{instance_id}/result")  # wait=0: at once
    assert now.status_code == 202


async def test_result_of_a_failed_instance_is_200_with_the_error(served: Served) -> None:
    instance_id = await start(served, "bad", 500)
    await settled(served, instance_id, "waiting")
    await served.http.post(f"/instances/{instance_id}/cancel")
    reply = await served.http.get(f"/instances/{instance_id}/result", params={"wait": 20})
    assert reply.status_code == 200
    assert reply.json()["status"] == "cancelled"
    assert reply.json()["finished"] is True
