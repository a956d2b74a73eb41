"""A real HTTP endpoint for push tasks: uvicorn serving a small Starlette app on
127.0.0.1 (a free port), in a thread of the test process.

Every request's Standard Webhooks signature is checked with ``standardwebhooks``'
``Webhook.verify`` against the endpoint's own secret; a request that fails it is answered
401 and recorded as unverified. The path says how to answer (see ``_answer``), and the
server records what it received and how many requests it held at once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from overture import protocol
from overture.codec import Codec
from overture.events import Envelope
from overture.ports import ClaimedTask, NewRecord

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def new_secret() -> str:
    """A fresh Standard Webhooks secret (32 random bytes)."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Received:
    """One request the endpoint got."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float


@dataclass
class PushServer:
    """The endpoint: its base URL, secret, and what it saw."""

    secret: str
    base: str = ""
    received: list[Received] = field(default_factory=list)
    current: int = 0
    peak: int = 0

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def reset(self) -> None:
        self.received.clear()
        self.current = 0
        self.peak = 0

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.path_params["path"]
        try:
            Webhook(self.secret).verify(body, dict(request.headers), json_parse=False)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.received.append(Received(path, dict(request.headers), body, verified, time.time()))
        if not verified:
            return Response("signature verification failed", status_code=401)
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            return await _answer(path, body)
        finally:
            self.current -= 1


async def _answer(path: str, body: bytes) -> Response:
    """How the endpoint answers, by path:

    ``echo`` (200, JSON: the request's input and attempt), ``empty`` (200, no body),
    ``blank`` (200, whitespace), ``nocontent`` (204), ``text`` (200, HTML), ``bigint``
    (200, an integer beyond 64 bits), ``big`` (200, a JSON string of 10,000 characters),
    ``status/<code>`` (that status, a short text body), ``redirect`` (307 to ``/echo``),
    ``slow/<seconds>`` (sleeps, then 200 JSON), ``trickle/<seconds>`` (200, a JSON string
    sent a byte every 0.1 s for that long: each read is quick, the whole is slow).
    """
    data = orjson.loads(body).get("data")  # None when a payload codec coded it
    if path == "echo":
        return JSONResponse({"echo": data["input"], "attempt": data["attempt"]})
    if path == "empty":
        return Response(b"", status_code=200)
    if path == "blank":
        return Response(b" \r\n ", status_code=200, media_type="application/json")
    if path == "nocontent":
        return Response(status_code=204)
    if path == "text":
        return Response(
            "<html><body>\n  Service   temporarily moved\n</body></html>", media_type="text/html"
        )
    if path == "bigint":
        return Response(b'{"n": 123456789012345678901234567890}', media_type="application/json")
    if path == "big":
        return JSONResponse("x" * 10_000)
    if path.startswith("status/"):
        code = int(path.split("/")[1])
        return Response(f"nope: the order {data['input']!r} is unknown here", status_code=code)
    if path == "redirect":
        return Response(status_code=307, headers={"location": "/echo"})
    if path.startswith("trickle/"):
        return StreamingResponse(_trickle(float(path.split("/")[1])), media_type="application/json")
    if path.startswith("slow/"):
        await asyncio.sleep(float(path.split("/")[1]))
        return JSONResponse({"slept": True})
    return Response("no such path", status_code=404)


async def _trickle(seconds: float) -> AsyncIterator[bytes]:
    """A JSON body sent a byte at a time, a byte every 0.1 s, for ``seconds``."""
    yield b'"'
    for _ in range(int(seconds * 10)):
        await asyncio.sleep(0.1)
        yield b"."
    yield b'"'


def free_port() -> int:
    """A port nothing listens on (bound, then closed: a connection to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def push_server_session() -> Iterator[PushServer]:
    server = PushServer(new_secret())
    app = Starlette(routes=[Route("/{path:path}", server.handle, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
        backlog=512,
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield server
    runner.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def push_server(push_server_session: PushServer) -> PushServer:
    push_server_session.reset()
    return push_server_session


def claimed(
    task: str,
    input: Any = None,
    *,
    deadline: float | None = None,
    attempt: int = 1,
    instance: str = "fulfil-0190",
    seq: int = 3,
    codec: Codec | None = None,
) -> ClaimedTask:
    """A claimed attempt whose request is the CloudEvent an engine publishes."""
    attempt_id = protocol.task_attempt_id(instance, seq, attempt)
    message = protocol.TaskRequest(
        task=task,
        queue=protocol.DEFAULT_QUEUE,
        input=input,
        instance_id=instance,
        seq=seq,
        attempt=attempt,
        idempotency_key=f"{instance}:{seq}",
        deadline=deadline,
        reply=protocol.Reply(partitionkey="order-7", partition=1),
    )
    envelope = Envelope(
        type=protocol.TASK_REQUESTED,
        data=message.model_dump(mode="json"),
        id=attempt_id,
        source="shop",
        subject=task,
        traceparent=TRACEPARENT,
        tenant="acme",
    )
    raw = (codec or Codec()).to_bytes(envelope)
    return ClaimedTask(attempt_id, protocol.DEFAULT_QUEUE, raw, time.time() + 30)


def result_of(
    record: NewRecord, request: ClaimedTask, codec: Codec | None = None
) -> tuple[Envelope, protocol.Control]:
    """The result event a record carries, checked to answer ``request``."""
    envelope = (codec or Codec()).from_bytes(record.value)
    assert envelope.id == protocol.task_result_id(request.id) == record.event_id
    assert record.event_type == envelope.type
    assert (record.key, record.partition) == ("order-7", 1)
    assert envelope.partitionkey == "order-7"
    assert (envelope.traceparent, envelope.tenant) == (TRACEPARENT, "acme")
    return envelope, protocol.parse_control(envelope.type, envelope.data)
