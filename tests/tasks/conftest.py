"""Remote tasks end to end through the real port: an engine (``Harness``, virtual clock),
and a test "worker" of a few lines that claims attempts from ``backend.tasks`` and
answers them with ``overture.tasks.completed`` / ``failed`` through ``finish``, as every
real worker does.

The configurations are the backends whose task queue exists on this branch (memory,
with and without the instance cache: cache size 0 replays every instance on every
input); SQLite and Kafka join once their queues land.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture import protocol, tasks
from overture.codec import Codec
from overture.events import Envelope
from overture.ports import ClaimedTask, FinishOutcome, NewRecord
from overture.testing import Harness

from ..conftest import kafka_url

Factory = Callable[..., AbstractAsyncContextManager[Harness]]


CONFIGURATIONS = [("memory", 10_000), ("memory", 0)]
"""(backend, cache size) of each run: add ("sqlite", ...) and ("kafka", ...) as the
SQLite and Kafka task queues land (the URLs below are ready for them)."""


@pytest.fixture(
    params=CONFIGURATIONS,
    ids=[kind if cache else f"{kind}-replay" for kind, cache in CONFIGURATIONS],
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """``async with harness(app) as h:`` an engine for ``app`` on the test's backend
    (fresh for each test, shared by the harnesses one test opens, as ``tests/conftest``'s)."""
    kind, cache_size = request.param
    if kind == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"))

    @asynccontextmanager
    async def make(app: ov.App, **kwargs: Any) -> AsyncIterator[Harness]:
        kwargs.setdefault("cache_size", cache_size)
        async with Harness(app, url, **kwargs) as h:
            yield h

    return make


@dataclass
class Attempt:
    """One claimed attempt: what the queue handed out, and its request parsed."""

    claimed: ClaimedTask
    envelope: Envelope
    request: protocol.TaskRequest


class Worker:
    """A worker of a few lines over the real ``TaskQueue`` port."""

    def __init__(self, h: Harness, name: str = "test-worker") -> None:
        self.queue = h.backend.tasks
        self.codec = Codec(h.app)
        self.name = name

    def claim(
        self, queues: tuple[str, ...] = (protocol.DEFAULT_QUEUE,), limit: int = 10
    ) -> list[Attempt]:
        out = []
        for claimed in self.queue.claim(list(queues), self.name, limit, 30.0):
            envelope, request = tasks.parse_request(self.codec, claimed.request)
            out.append(Attempt(claimed, envelope, request))
        return out

    def one(self, queues: tuple[str, ...] = (protocol.DEFAULT_QUEUE,)) -> Attempt:
        (attempt,) = self.claim(queues)
        return attempt

    def completed(self, attempt: Attempt, output: Any) -> NewRecord:
        return tasks.completed(self.codec, attempt.envelope, attempt.request, output)

    def failed(
        self, attempt: Attempt, error_type: str, message: str, *, retryable: bool = True
    ) -> NewRecord:
        return tasks.failed(
            self.codec, attempt.envelope, attempt.request, error_type, message, retryable=retryable
        )

    def finish(self, attempt: Attempt, result: NewRecord) -> FinishOutcome:
        return self.queue.finish(attempt.claimed.id, self.name, result)

    def complete(self, attempt: Attempt, output: Any) -> FinishOutcome:
        return self.finish(attempt, self.completed(attempt, output))

    def fail(
        self, attempt: Attempt, error_type: str, message: str, *, retryable: bool = True
    ) -> FinishOutcome:
        return self.finish(attempt, self.failed(attempt, error_type, message, retryable=retryable))


def wall_deadline(deadline: float | None, timeout: float) -> bool:
    """Whether a request's deadline is ``timeout`` seconds from now on the wall clock
    (requests carry wall time for workers, whatever clock the engine runs)."""
    return deadline is not None and abs(deadline - (time.time() + timeout)) < 5.0
