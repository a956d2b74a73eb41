"""PushExecutor against a real HTTP endpoint (uvicorn on 127.0.0.1, see conftest.py):
what is sent (the request bytes, structured mode, a Standard Webhooks signature the
endpoint verifies) and what each kind of answer becomes."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

import overture as ov
from overture import protocol
from overture.codec import Codec
from overture.push import CONTENT_TYPE, PushExecutor, PushOptions

from .conftest import PushServer, claimed, free_port, result_of

Make = Callable[..., PushExecutor]


@pytest.fixture
async def make(push_server: PushServer) -> AsyncIterator[Make]:
    """Makes executors for push tasks named after the endpoint path they POST to."""
    made: list[PushExecutor] = []

    def factory(
        *paths: str,
        secret: str | None = None,
        options: PushOptions | None = None,
        timeout: timedelta | None = None,
        base: str | None = None,
    ) -> PushExecutor:
        app = ov.App("shop")
        for path in paths:
            url = f"{base}/{path}" if base else push_server.url(path)
            app.task(path, url=url, secret_env="PUSH_SECRET", timeout=timeout)
        executor = PushExecutor(
            [d for d in app.tasks if d.url],
            Codec(app),
            options=options,
            environ={"PUSH_SECRET": secret or push_server.secret},
        )
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        await executor.close()


async def test_a_2xx_json_body_is_the_output_of_a_signed_structured_request(
    make: Make, push_server: PushServer
) -> None:
    executor = make("echo")
    request = claimed("echo", {"order": "o-7", "amount": 12}, attempt=2)
    before = time.time()
    record = await executor.run(request)

    [got] = push_server.received
    assert got.verified, "the endpoint's Webhook.verify accepted the signature"
    assert got.body == request.request, "the body is the request exactly as published"
    assert got.headers["content-type"] == CONTENT_TYPE
    assert got.headers["webhook-id"] == request.id == "task:fulfil-0190:3:2"
    assert before - 1 <= int(got.headers["webhook-timestamp"]) <= time.time()
    assert got.headers["webhook-signature"].startswith("v1,")
    envelope, message = result_of(record, request)
    assert envelope.type == protocol.TASK_COMPLETED
    assert envelope.subject == "echo" and envelope.source == "shop"
    assert message == protocol.TaskCompletion(
        instance_id="fulfil-0190",
        seq=3,
        attempt=2,
        output={"echo": {"order": "o-7", "amount": 12}, "attempt": 2},
    )


class _Zlib:
    """Compression as a payload codec."""

    name = "zlib"

    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        return zlib.decompress(data)


async def test_with_a_payload_codec_the_coded_request_is_sent_as_published(
    push_server: PushServer,
) -> None:
    app = ov.App("shop", payload_codec=_Zlib())
    app.task("empty", url=push_server.url("empty"), secret_env="S")
    codec = Codec(app)
    request = claimed("empty", {"card": "4242"}, codec=codec)
    async with PushExecutor(app.tasks, codec, environ={"S": push_server.secret}) as executor:
        record = await executor.run(request)
    [got] = push_server.received
    assert got.verified and got.body == request.request
    assert b'"data_base64"' in got.body and b"4242" not in got.body
    assert b'"data_base64"' in record.value, "the result is coded by the app's codec too"
    _, message = result_of(record, request, codec)
    assert isinstance(message, protocol.TaskCompletion) and message.output is None


async def test_a_wrong_secret_fails_the_endpoints_verification(
    make: Make, push_server: PushServer
) -> None:
    from .conftest import new_secret

    executor = make("echo", secret=new_secret())
    request = claimed("echo", {"order": "o-7"})
    _, message = result_of(await executor.run(request), request)

    [got] = push_server.received
    assert not got.verified
    assert isinstance(message, protocol.TaskFailure)
    assert not message.retryable
    assert message.error.type == "HTTPStatusError"
    assert "answered 401" in message.error.message
    assert "signature verification failed" in message.error.message


@pytest.mark.parametrize("path", ["empty", "blank", "nocontent"])
async def test_an_empty_2xx_body_is_a_null_output(make: Make, path: str) -> None:
    request = claimed(path, {"x": 1})
    _, message = result_of(await make(path).run(request), request)
    assert message == protocol.TaskCompletion(
        instance_id="fulfil-0190", seq=3, attempt=1, output=None
    )


async def test_a_2xx_body_that_is_not_json_fails_for_good(make: Make) -> None:
    request = claimed("text")
    _, message = result_of(await make("text").run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("InvalidResponse", False)
    assert "answered 200 OK with a body that is not JSON (text/html" in message.error.message
    assert "Service temporarily moved" in message.error.message, "an excerpt, whitespace folded"


async def test_a_2xx_integer_beyond_64_bits_fails_instead_of_being_rounded(make: Make) -> None:
    request = claimed("bigint")
    _, message = result_of(await make("bigint").run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("InvalidResponse", False)
    assert "answered 200 OK: output.n: the integer 123456789012345678901234567890 is " in (
        message.error.message
    )


async def test_a_body_over_max_response_fails_for_good(make: Make) -> None:
    request = claimed("big")
    executor = make("big", options=PushOptions(max_response=1000))
    _, message = result_of(await executor.run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("InvalidResponse", False)
    assert "over 1000 bytes" in message.error.message
    # the same body under a larger limit is an output
    _, whole = result_of(await make("big").run(request), request)
    assert isinstance(whole, protocol.TaskCompletion) and whole.output == "x" * 10_000


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(400, False), (404, False), (408, True), (429, True), (500, True), (503, True)],
)
async def test_an_error_status_fails_retryably_only_for_408_429_and_5xx(
    make: Make, push_server: PushServer, code: int, retryable: bool
) -> None:
    path = f"status/{code}"
    request = claimed(path, "o-9")
    _, message = result_of(await make(path).run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert message.error.type == "HTTPStatusError"
    assert message.retryable is retryable
    assert f"POST {push_server.url(path)} answered {code} " in message.error.message
    assert "nope: the order 'o-9' is unknown here" in message.error.message


async def test_a_redirect_is_not_followed(make: Make, push_server: PushServer) -> None:
    request = claimed("redirect")
    _, message = result_of(await make("redirect").run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert not message.retryable
    assert "answered 307" in message.error.message
    assert "redirects are not followed; Location: /echo" in message.error.message
    assert [r.path for r in push_server.received] == ["redirect"]


async def test_a_refused_connection_fails_retryably(make: Make) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    request = claimed("anything")
    _, message = result_of(await make("anything", base=base).run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert message.retryable
    assert message.error.type == "ConnectError"
    assert f"POST {base}/anything failed: " in message.error.message
    assert "ConnectionRefusedError" in message.error.message


@pytest.mark.parametrize(
    ("reply", "name", "said"),
    [
        (b"", "RemoteProtocolError", "Server disconnected"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n[1,",
            "RemoteProtocolError",
            "Response payload is not completed",
        ),
        (b"SMTP ready\r\n\r\n", "RemoteProtocolError", "Bad status line: "),
        (None, "ReadError", "[Errno 104] Connection reset by peer"),
    ],
    ids=["closed-unanswered", "body-cut-short", "not-http", "reset"],
)
async def test_a_server_that_breaks_the_exchange_fails_retryably(
    make: Make, reply: bytes | None, name: str, said: str
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if reply is None:  # a reset (RST): close at once, dropping what is unsent
            linger = struct.pack("ii", 1, 0)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
            return
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        request = claimed("x")
        record = await make("x", base=f"http://127.0.0.1:{port}").run(request)
    finally:
        server.close()
        await server.wait_closed()
    _, message = result_of(record, request)
    assert isinstance(message, protocol.TaskFailure)
    assert message.retryable
    assert message.error.type == name
    assert f"POST http://127.0.0.1:{port}/x failed: {said}" in message.error.message
    assert "\n" not in message.error.message


async def test_a_server_slower_than_the_deadline_times_out_at_the_deadline(
    make: Make, push_server: PushServer
) -> None:
    executor = make("slow/5")
    request = claimed("slow/5", deadline=time.time() + 1.0)
    started = time.monotonic()
    _, message = result_of(await executor.run(request), request)
    elapsed = time.monotonic() - started
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("TimeoutError", True)
    assert "no complete response within" in message.error.message
    assert "the time left before the attempt's deadline" in message.error.message
    assert 0.5 < elapsed < 3.5, elapsed
    assert [r.path for r in push_server.received] == ["slow/5"]


async def test_the_deadline_bounds_the_whole_exchange_not_each_read(make: Make) -> None:
    # every byte arrives well within the bound; the body as a whole does not
    executor = make("trickle/5")
    request = claimed("trickle/5", deadline=time.time() + 1.0)
    started = time.monotonic()
    _, message = result_of(await executor.run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("TimeoutError", True)
    assert time.monotonic() - started < 3.5


async def test_without_a_deadline_the_tasks_timeout_bounds_the_request(make: Make) -> None:
    request = claimed("slow/5")
    executor = make("slow/5", timeout=timedelta(seconds=0.4))
    started = time.monotonic()
    _, message = result_of(await executor.run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("TimeoutError", True)
    assert "(the task's timeout;" in message.error.message
    assert time.monotonic() - started < 3.5


async def test_without_any_bound_the_executors_timeout_applies(make: Make) -> None:
    request = claimed("slow/5")
    executor = make("slow/5", options=PushOptions(timeout=0.4))
    started = time.monotonic()
    _, message = result_of(await executor.run(request), request)
    assert isinstance(message, protocol.TaskFailure) and message.error.type == "TimeoutError"
    assert "(PushOptions.timeout;" in message.error.message
    assert time.monotonic() - started < 3.5


async def test_an_attempt_past_its_deadline_is_not_sent(
    make: Make, push_server: PushServer
) -> None:
    request = claimed("echo", deadline=time.time() - 1)
    _, message = result_of(await make("echo").run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("TaskTimeout", True)
    assert push_server.received == []


async def test_a_task_the_executor_does_not_serve_fails_for_good(
    make: Make, push_server: PushServer
) -> None:
    executor = make("echo")
    assert executor.serves("echo") and not executor.serves("shipping.create")
    assert executor.tasks == frozenset({"echo"})
    request = claimed("shipping.create")
    _, message = result_of(await executor.run(request), request)
    assert isinstance(message, protocol.TaskFailure)
    assert (message.error.type, message.retryable) == ("UnknownTask", False)
    assert "'shipping.create' is not a push task of this worker (it serves: echo)" in (
        message.error.message
    )
    assert push_server.received == []


async def test_a_queue_entry_that_is_not_a_task_request_raises(make: Make) -> None:
    request = claimed("echo")
    cancel = ov.Envelope(type=protocol.CANCEL, data={"instance_id": "x"})
    bad = type(request)(request.id, request.queue, Codec().to_bytes(cancel), request.lease_until)
    with pytest.raises(
        ov.MalformedEvent, match=re.escape("must be a 'overture.task.requested' event")
    ):
        await make("echo").run(bad)
