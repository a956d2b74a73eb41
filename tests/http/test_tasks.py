"""The task endpoints for HTTP workers, against a real server and a real engine (memory
and SQLite): claim with its long poll, heartbeat, complete and fail, and every error
answered before anything is written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from overture import protocol
from overture.http import tasks as http_tasks

from .conftest import Served, serving
from .taskshop import QUEUE
from .taskshop import app as taskshop

WORKER = "w-1"


@pytest.fixture(params=["sqlite", "memory"])
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    url = f"sqlite:///{tmp_path / 'tasks.db'}" if request.param == "sqlite" else "memory://tasks"
    async with serving(url, app=taskshop) as running:
        yield running


async def start(served: Served, order_id: str, **fields: Any) -> str:
    """Post a charge request; the id of the instance it starts."""
    event = {
        "specversion": "1.0",
        "id": f"charge-{order_id}",
        "source": "/test",
        "type": "charge.requested",
        "data": {"order_id": order_id, **fields},
    }
    reply = await served.http.post(
        "/events?start=true",
        content=orjson.dumps(event),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert reply.status_code == 202, reply.text
    [instance_id] = reply.json()["instances"]
    return str(instance_id)


async def claim(served: Served, **body: Any) -> httpx.Response:
    return await served.http.post(
        "/tasks/claim", json={"worker": WORKER, "queues": [QUEUE], **body}
    )


async def claim_one(served: Served, **body: Any) -> dict[str, Any]:
    reply = await claim(served, wait=10, **body)
    assert reply.status_code == 200, reply.text
    [task] = reply.json()["tasks"]
    return dict(task)


async def result(served: Served, instance_id: str) -> Any:
    reply = await served.http.get(f"/instances/{instance_id}/result", params={"wait": 10})
    assert reply.status_code == 200, reply.text
    return reply.json()["result"]


def path(task: dict[str, Any], action: str) -> str:
    return f"/tasks/{task['id']}/{action}"


async def test_a_claimed_attempt_completed_is_what_the_call_returns(shop: Served) -> None:
    instance_id = await start(shop, "o-1", amount=42)
    task = await claim_one(shop, lease=20)
    request = task["request"]
    assert task["queue"] == QUEUE and request["type"] == protocol.TASK_REQUESTED
    seq = request["data"]["seq"]
    assert task["id"] == request["id"] == protocol.task_attempt_id(instance_id, seq, 1)
    assert request["data"]["input"] == {"order_id": "o-1", "amount": 42, "seconds": 0.0}
    assert request["data"]["reply"]["partitionkey"] == "o-1"
    assert time.time() + 15 < task["lease_until"] <= time.time() + 20
    done = await shop.http.post(path(task, "complete"), json={"worker": WORKER, "output": [1, "x"]})
    assert done.status_code == 200, done.text
    assert done.json() == {"status": "accepted"}
    assert await result(shop, instance_id) == {"output": [1, "x"]}
    # the result event is the one tasks.completed builds: its id, key, source, subject
    found = shop.backend.log.find_event(protocol.task_result_id(task["id"]))
    assert found is not None and found.key == "o-1"


async def test_a_non_retryable_failure_is_the_processs_task_failed(shop: Served) -> None:
    instance_id = await start(shop, "o-2")
    task = await claim_one(shop)
    failed = await shop.http.post(
        path(task, "fail"),
        json={
            "worker": WORKER,
            "error": {"type": "CardDeclined", "message": "declined"},
            "retryable": False,
        },
    )
    assert failed.status_code == 200, failed.text
    assert await result(shop, instance_id) == {
        "failed": "CardDeclined",
        "message": "declined",
        "attempts": 1,
    }


async def test_a_retryable_failure_brings_the_next_attempt(shop: Served) -> None:
    instance_id = await start(shop, "o-3")
    first = await claim_one(shop)
    failed = await shop.http.post(
        path(first, "fail"), json={"worker": WORKER, "error": {"type": "Busy", "message": "later"}}
    )
    assert failed.status_code == 200, failed.text
    second = await claim_one(shop)
    assert second["id"] == protocol.task_attempt_id(instance_id, first["request"]["data"]["seq"], 2)
    assert (
        second["request"]["data"]["idempotency_key"] == first["request"]["data"]["idempotency_key"]
    )
    await shop.http.post(path(second, "complete"), json={"worker": WORKER})
    assert await result(shop, instance_id) == {"output": None}


async def test_heartbeats_extend_the_lease_until_the_attempt_is_not_yours(shop: Served) -> None:
    await start(shop, "o-4")
    task = await claim_one(shop, lease=1)
    beat = await shop.http.post(path(task, "heartbeat"), json={"worker": WORKER, "lease": 60})
    assert beat.status_code == 200, beat.text
    assert beat.json()["lease_until"] > time.time() + 50
    await asyncio.sleep(1.2)  # past the first lease: the heartbeat kept it
    other = await shop.http.post("/tasks/claim", json={"worker": "w-2", "queues": [QUEUE]})
    assert other.json() == {"tasks": []}
    stolen = await shop.http.post(path(task, "heartbeat"), json={"worker": "w-2", "lease": 5})
    assert stolen.status_code == 409, stolen.text
    assert "not held by 'w-2'" in stolen.json()["error"]
    done = await shop.http.post(path(task, "complete"), json={"worker": WORKER, "output": 1})
    assert done.status_code == 200, done.text
    after = await shop.http.post(path(task, "heartbeat"), json={"worker": WORKER})
    assert after.status_code == 409, after.text
    assert "has ended" in after.json()["error"]


async def test_a_lease_that_ran_out_hands_the_attempt_to_the_next_claim(shop: Served) -> None:
    instance_id = await start(shop, "o-5")
    first = await claim_one(shop, lease=1)
    # nothing commits meanwhile: the long poll finds it by re-claiming (POLL)
    again = await shop.http.post(
        "/tasks/claim", json={"worker": "w-2", "queues": [QUEUE], "wait": 10}
    )
    [second] = again.json()["tasks"]
    assert second["id"] == first["id"]
    lost = await shop.http.post(path(first, "heartbeat"), json={"worker": WORKER})
    assert lost.status_code == 409
    # the first result of the attempt wins, whoever sends it; the second is dropped
    late = await shop.http.post(path(first, "complete"), json={"worker": WORKER, "output": "a"})
    assert late.status_code == 200, late.text
    size = shop.log_size()
    dropped = await shop.http.post(path(second, "complete"), json={"worker": "w-2", "output": "b"})
    assert dropped.status_code == 409, dropped.text
    assert dropped.json()["error"].endswith("has ended: the result was dropped")
    assert shop.log_size() == size
    assert await result(shop, instance_id) == {"output": "a"}


async def test_unknown_and_ended_attempts_write_nothing(shop: Served) -> None:
    await start(shop, "o-6")
    task = await claim_one(shop)
    size = shop.log_size()
    unknown = protocol.task_attempt_id("nosuchinstance", 0, 1)
    for action, body in (
        ("complete", {"worker": WORKER, "output": 1}),
        ("fail", {"worker": WORKER, "error": {"type": "X", "message": ""}}),
        ("heartbeat", {"worker": WORKER}),
    ):
        reply = await shop.http.post(f"/tasks/{unknown}/{action}", json=body)
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"].startswith(f"no attempt {unknown!r} is known here")
    assert shop.log_size() == size
    done = await shop.http.post(path(task, "complete"), json={"worker": WORKER, "output": 1})
    assert done.status_code == 200
    size = shop.log_size()
    for action, body in (
        ("complete", {"worker": WORKER, "output": 2}),
        ("fail", {"worker": WORKER, "error": {"type": "X", "message": ""}}),
    ):
        reply = await shop.http.post(path(task, action), json=body)
        assert reply.status_code == 409, reply.text
    assert shop.log_size() == size


BAD_CLAIMS = [
    ({"queues": [QUEUE]}, "worker"),
    ({"worker": "", "queues": [QUEUE]}, "worker"),
    ({"worker": WORKER}, "queues"),
    ({"worker": WORKER, "queues": []}, "queues"),
    ({"worker": WORKER, "queues": "payments"}, "queues"),
    ({"worker": WORKER, "queues": ["no spaces"]}, "queues"),
    ({"worker": WORKER, "queues": [QUEUE], "max": 0}, "max"),
    ({"worker": WORKER, "queues": [QUEUE], "max": 101}, "max"),
    ({"worker": WORKER, "queues": [QUEUE], "max": "2"}, "max"),
    ({"worker": WORKER, "queues": [QUEUE], "max": True}, "max"),
    ({"worker": WORKER, "queues": [QUEUE], "lease": 0.5}, "lease"),
    ({"worker": WORKER, "queues": [QUEUE], "lease": 3601}, "lease"),
    ({"worker": WORKER, "queues": [QUEUE], "wait": 31}, "wait"),
    ({"worker": WORKER, "queues": [QUEUE], "wait": -1}, "wait"),
    ({"worker": WORKER, "queues": [QUEUE], "lease": "30"}, "lease"),
    ({"worker": WORKER, "queues": [QUEUE], "leese": 30}, "leese"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CLAIMS)
async def test_a_bad_claim_is_a_422_naming_the_field_and_claims_nothing(
    served_tasks: Served, body: dict[str, Any], field: str
) -> None:
    reply = await served_tasks.http.post("/tasks/claim", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"].split(".")[0] == field, reply.json()
    # the attempt is still there for a good claim
    assert (await claim_one(served_tasks))["id"].startswith("task:")


@pytest.fixture
async def served_tasks(tmp_path: Path) -> AsyncIterator[Served]:
    """SQLite, with one attempt published."""
    async with serving(f"sqlite:///{tmp_path / 'bad.db'}", app=taskshop) as running:
        await start(running, "bad")
        yield running


BAD_ANSWERS = [
    ("complete", {"output": 1}, "worker"),
    ("complete", {"worker": 7, "output": 1}, "worker"),
    ("complete", {"worker": WORKER, "output": 1, "extra": 2}, "extra"),
    ("fail", {"worker": WORKER}, "error"),
    ("fail", {"worker": WORKER, "error": {"type": "", "message": "m"}}, "error.type"),
    ("fail", {"worker": WORKER, "error": {"type": "T"}}, "error.message"),
    ("fail", {"worker": WORKER, "error": "boom"}, "error"),
    (
        "fail",
        {"worker": WORKER, "error": {"type": "T", "message": "m"}, "retryable": 0},
        "retryable",
    ),
    ("heartbeat", {"worker": WORKER, "lease": 0}, "lease"),
    ("heartbeat", {"lease": 10}, "worker"),
]


@pytest.mark.parametrize(("action", "body", "field"), BAD_ANSWERS)
async def test_a_bad_answer_is_a_422_naming_the_field_and_writes_nothing(
    served_tasks: Served, action: str, body: dict[str, Any], field: str
) -> None:
    task = await claim_one(served_tasks)
    size = served_tasks.log_size()
    reply = await served_tasks.http.post(path(task, action), json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field, reply.json()
    assert served_tasks.log_size() == size
    # the attempt is still open: a good answer is accepted
    done = await served_tasks.http.post(path(task, "complete"), json={"worker": WORKER})
    assert done.status_code == 200, done.text


async def test_bodies_that_are_not_json_objects_are_refused(served_tasks: Served) -> None:
    task = await claim_one(served_tasks)
    size = served_tasks.log_size()
    for target in ("/tasks/claim", path(task, "complete")):
        for content, status in ((b"{nope", 400), (b"\xff", 400), (b"[1]", 422)):
            reply = await served_tasks.http.post(
                target, content=content, headers={"content-type": "application/json"}
            )
            assert reply.status_code == status, (target, content, reply.text)
            assert "error" in reply.json()
    # an integer beyond 64 bits cannot travel exactly
    huge = await served_tasks.http.post(
        path(task, "complete"),
        content=b'{"worker": "w-1", "output": 123456789012345678901234567890}',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 422, huge.text
    assert huge.json()["field"] == "output"
    assert served_tasks.log_size() == size


async def test_the_long_poll_answers_when_an_attempt_is_published(
    served_tasks: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the re-claims of the fallback are made too slow to matter: only the queue's
    # wake-up (the engine's commit that publishes the attempt) can answer in time
    monkeypatch.setattr(http_tasks, "POLL", 60.0)
    await claim_one(served_tasks)  # the fixture's attempt: out of the way
    began = time.monotonic()
    poll = asyncio.create_task(claim(served_tasks, wait=20))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await start(served_tasks, "late")
    reply = await asyncio.wait_for(poll, 5)
    waited = time.monotonic() - began
    [task] = reply.json()["tasks"]
    assert task["request"]["data"]["input"]["order_id"] == "late"
    assert waited < 3, waited


async def test_the_long_poll_ends_empty_at_its_wait(shop: Served) -> None:
    began = time.monotonic()
    reply = await claim(shop, wait=0.6)
    waited = time.monotonic() - began
    assert reply.status_code == 200 and reply.json() == {"tasks": []}
    assert 0.6 <= waited < 2.0, waited
    began = time.monotonic()
    assert (await claim(shop)).json() == {"tasks": []}  # wait 0: at once
    assert time.monotonic() - began < 0.5


async def test_a_claim_hands_out_at_most_max_oldest_first(shop: Served) -> None:
    for n in range(5):
        await start(shop, f"m-{n}")
    deadline = time.monotonic() + 10
    got: list[dict[str, Any]] = []
    while len(got) < 5 and time.monotonic() < deadline:
        reply = await claim(shop, max=3, wait=5)
        batch = reply.json()["tasks"]
        assert len(batch) <= 3
        got += batch
    assert sorted(t["request"]["data"]["input"]["order_id"] for t in got) == [
        f"m-{n}" for n in range(5)
    ]
    assert len({t["id"] for t in got}) == 5


async def test_a_stopping_server_answers_its_long_polls_at_once(tmp_path: Path) -> None:
    async with serving(f"sqlite:///{tmp_path / 'stop.db'}", app=taskshop) as served:
        poll = asyncio.create_task(claim(served, wait=20))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        served.server.stop()
        reply = await asyncio.wait_for(poll, 5)
        assert reply.status_code == 200 and reply.json() == {"tasks": []}
        assert time.monotonic() - began < 1.5  # not cut off after the 3 s grace
