"""Push tasks end to end: a process calls a task declared with ``url=``; the engine
publishes the attempt, a ``Worker`` claims it and POSTs it (signed) to a real endpoint,
and the endpoint's answer becomes the call's result, its retries or its ``TaskFailed``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture.backends import open_backend
from overture.errors import ConfigError
from overture.protocol import FINAL
from overture.testing import Harness
from overture.worker import Worker

from .conftest import PushServer

SECRET_ENV = "OVERTURE_TEST_PUSH_SECRET"


def push_app(server: PushServer, path: str) -> ov.App:
    app = ov.App("payments")
    app.task(
        "payment.authorize",
        url=server.url(path),
        secret_env=SECRET_ENV,
        retry=ov.Retry(max_attempts=2, initial_interval=timedelta(milliseconds=10)),
        timeout=timedelta(seconds=5),
    )

    @app.process(trigger="order.placed")
    async def pay(ctx: ov.Context, event: ov.Event) -> Any:
        try:
            return await ctx.call("payment.authorize", {"order": event.data["order"]})
        except ov.TaskFailed as error:
            return {"failed": error.error_type, "attempts": error.attempts}

    return app


async def run_one(app: ov.App, url: str) -> Any:
    async with Harness(app, url, clock=ov.SystemClock()) as h, Worker(app, h.backend, poll=0.05):
        started = h.client.start("order.placed", {"order": "o-1"}, key="o-1")
        for _ in range(400):  # the harness's engine runs when asked to; the worker runs
            await h.idle()
            instance = h.client.instance(started.instance_id)
            if instance.status in FINAL:
                return instance.result
            await asyncio.sleep(0.05)
        raise AssertionError(f"{instance} did not finish")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'push.db'}"


async def test_a_push_tasks_answer_is_the_calls_result(
    push_server: PushServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, push_server.secret)
    assert await run_one(push_app(push_server, "echo"), sqlite_url) == {
        "echo": {"order": "o-1"},
        "attempt": 1,
    }
    (received,) = push_server.received
    assert received.verified and received.headers["webhook-id"].startswith("task:")


async def test_a_5xx_is_retried_and_a_4xx_fails_the_call_at_once(
    push_server: PushServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SECRET_ENV, push_server.secret)
    result = await run_one(push_app(push_server, "status/503"), sqlite_url)
    assert result == {"failed": "HTTPStatusError", "attempts": 2}
    assert len(push_server.received) == 2
    push_server.reset()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = await run_one(push_app(push_server, "status/400"), other)
    assert result == {"failed": "HTTPStatusError", "attempts": 1}
    assert len(push_server.received) == 1


def test_a_worker_for_a_push_task_without_its_secret_is_refused_at_start(
    push_server: PushServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    app = push_app(push_server, "echo")
    backend = open_backend(sqlite_url)
    try:
        with pytest.raises(ConfigError, match=SECRET_ENV):
            Worker(app, backend)
    finally:
        backend.close()


@pytest.mark.parametrize("concurrency", [3, 250])
async def test_a_workers_push_connections_are_as_many_as_its_concurrency(
    push_server: PushServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    monkeypatch.setenv(SECRET_ENV, push_server.secret)
    backend = open_backend(sqlite_url)
    try:
        worker = Worker(push_app(push_server, "echo"), backend, concurrency=concurrency)
        assert worker._push is not None
        assert worker._push.options.max_connections == concurrency
        await worker._push.close()
    finally:
        backend.close()
