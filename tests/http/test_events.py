"""POST /events through a real server, with the CloudEvents SDK as the producer: binary,
structured and batch mode, idempotency by id, the group commit, start=true."""

from __future__ import annotations

import asyncio

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

import overture as ov

from .conftest import Served


def order(event_id: str, order_id: str, quantity: int = 1, **extra: object) -> CloudEvent:
    return CloudEvent(
        attributes={"id": event_id, "source": "/tests/http", "type": "order.placed", **extra},
        data={"order_id": order_id, "quantity": quantity},
    )


def logged(served: Served) -> list[ov.Envelope]:
    with ov.Client(served.backend) as client:
        return [e.envelope for e in client.events() if e.envelope is not None]


async def test_binary_mode_event_is_appended_with_its_attributes(served: Served) -> None:
    message = ce_http.to_binary_event(
        order(
            "bin-1",
            "o-1",
            3,
            subject="orders/o-1",
            tenant="acme",
            datacontenttype="application/json",
        )
    )
    reply = await served.http.post("/events", headers=message.headers, content=message.body)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"ids": ["bin-1"]}
    [envelope] = logged(served)
    assert (envelope.id, envelope.type, envelope.source) == ("bin-1", "order.placed", "/tests/http")
    assert envelope.data == {"order_id": "o-1", "quantity": 3}
    assert envelope.subject == "orders/o-1"
    assert envelope.tenant == "acme"
    assert envelope.partitionkey == "o-1"  # from the contract's key, as `overture send` does


async def test_structured_mode_event_is_appended(served: Served) -> None:
    message = ce_http.to_structured_event(order("st-1", "o-2", 5, partitionkey="custom"))
    assert message.headers["content-type"].startswith("application/cloudevents+json")
    reply = await served.http.post("/events", headers=message.headers, content=message.body)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"ids": ["st-1"]}
    [envelope] = logged(served)
    assert envelope.data == {"order_id": "o-2", "quantity": 5}
    assert envelope.partitionkey == "custom"


async def test_batch_mode_appends_every_event_in_order(served: Served) -> None:
    fmt = JSONFormat()
    body = b"[" + b",".join(fmt.write(order(f"b-{n}", f"o-{n}")) for n in range(5)) + b"]"
    reply = await served.http.post(
        "/events", headers={"content-type": "application/cloudevents-batch+json"}, content=body
    )
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"ids": [f"b-{n}" for n in range(5)]}
    assert sorted(e.id for e in logged(served)) == [f"b-{n}" for n in range(5)]


async def test_a_repeated_event_id_is_accepted_and_appended_once(served: Served) -> None:
    message = ce_http.to_binary_event(order("same", "o-3"))
    for _ in range(3):
        reply = await served.http.post("/events", headers=message.headers, content=message.body)
        assert reply.status_code == 202, reply.text
        assert reply.json() == {"ids": ["same"]}
    assert [e.id for e in logged(served)] == ["same"]


async def test_concurrent_requests_are_each_acknowledged_once_durable(served: Served) -> None:
    async def post(n: int) -> str:
        message = ce_http.to_binary_event(order(f"c-{n}", f"o-{n}"))
        reply = await served.http.post("/events", headers=message.headers, content=message.body)
        assert reply.status_code == 202, reply.text
        # acknowledged: the event is in the log already, as any other reader sees it
        [event_id] = reply.json()["ids"]
        return str(event_id)

    ids = await asyncio.gather(*(post(n) for n in range(40)))
    assert sorted(e.id for e in logged(served)) == sorted(ids)
    # group-committed: the requests waiting at one moment shared appends
    assert served.appends() < 40


async def test_start_answers_the_instance_the_event_starts(served: Served) -> None:
    message = ce_http.to_binary_event(order("start-1", "o-9", 2))
    reply = await served.http.post(
        "/events?start=true", headers=message.headers, content=message.body
    )
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["ids"] == ["start-1"]
    [instance_id] = body["instances"]
    result = await served.http.get(f"/instances/{instance_id}/result", params={"wait": 20})
    assert result.status_code == 200, result.text
    assert result.json()["result"] == {"order": "o-9", "shipped": 2}
    assert result.json()["id"] == instance_id


async def test_start_of_an_event_that_starts_nothing_is_refused(served: Served) -> None:
    before = served.log_size()
    reply = await served.http.post(
        "/events?start=true",
        headers={
            "ce-id": "n1",
            "ce-source": "/t",
            "ce-type": "note.added",
            "ce-specversion": "1.0",
        },
        json={"text": "hi"},
    )
    assert reply.status_code == 422, reply.text
    assert "no process" in reply.json()["error"]
    assert served.log_size() == before


async def test_binary_mode_header_values_are_percent_decoded(served: Served) -> None:
    message = ce_http.to_binary_event(order("pct-1", "o-4", subject='a "b" 100% ü'))
    assert message.headers["ce-subject"] != 'a "b" 100% ü'  # the SDK encoded it
    reply = await served.http.post("/events", headers=message.headers, content=message.body)
    assert reply.status_code == 202, reply.text
    [envelope] = logged(served)
    assert envelope.subject == 'a "b" 100% ü'
