"""Remote tasks end to end through the real port: an engine (``Harness``, virtual clock),
and a test "worker" of a few lines that claims attempts from ``backend.tasks`` and
answers them with ``overture.tasks.completed`` / ``failed`` through ``finish``, as every
real worker does.

The configurations are the backends whose task queue exists on this branch (memory,
with and without the instance cache: cache size 0 replays every instance on every
input); SQLite and Kafka join once their queues land.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import overture as ov
from overture import protocol, tasks
from overture.codec import Codec
from overture.events import Envelope
from overture.ports import ClaimedTask, FinishOutcome, NewRecord
from overture.testing import Harness

Factory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(params=[10_000, 0], ids=["memory", "memory-replay"])
def harness(request: pytest.FixtureRequest) -> Factory:
    """``async with harness(app) as h:`` an engine for ``app`` on a fresh memory backend."""
    cache_size = request.param

    @asynccontextmanager
    async def make(app: ov.App, **kwargs: Any) -> AsyncIterator[Harness]:
        kwargs.setdefault("cache_size", cache_size)
        async with Harness(app, **kwargs) as h:
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
