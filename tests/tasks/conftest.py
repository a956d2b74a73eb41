"""Remote tasks end to end through the real port: an engine (``Harness``, virtual clock),
and a test "worker" of a few lines that claims attempts from ``backend.tasks`` and
answers them with ``overture.tasks.completed`` / ``failed`` through ``finish``, as every
real worker does.

Every test runs on memory, SQLite and Kafka (a real broker), each with and without the
instance cache (cache size 0 replays every instance on every input). Two things differ
on Kafka, and the :class:`Worker` says so instead of the tests weakening their asserts
for every backend:

- attempts reach a claim only once the queue's consumer joined its worker group and
  fetched them: :meth:`Worker.claim` waits for the attempts a test expects (``expect``),
  and a claim that expects none watches for a while before it answers ``[]``;
- there is no end marker: an attempt the engine ended (``Batch.tasks[id] = None``) stays
  claimable until its deadline, and a result for it is accepted (and dropped by the
  engine) unless this process took one already. Asserts that hold only where the queue
  learns of the end are guarded by ``worker.sees_ends``.
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


CONFIGURATIONS = [
    ("memory", 10_000),
    ("memory", 0),
    ("sqlite", 10_000),
    ("sqlite", 0),
    ("kafka", 10_000),
    ("kafka", 0),
]
"""(backend, cache size) of each run."""

SETTLE = 0.5
"""Seconds a Kafka claim that expects nothing watches for attempts before answering:
longer than the queue consumer takes to fetch a committed attempt (it polls every 50 ms),
so an attempt that should not be there shows up."""
CLAIM_TIMEOUT = 30.0
"""Seconds a claim waits for the attempts it expects (on Kafka the first claim of a
queue also waits for the group to assign its partitions)."""


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
        self.fetches = h.url.startswith("kafka:")
        """The queue hands out attempts once its consumer fetched them (Kafka)."""
        self.sees_ends = not self.fetches
        """The queue learns when the engine ends an attempt: it is not claimable any
        more and a result for it is refused (``"ended"``). Not on Kafka (no end marker:
        only a result taken by this process ends an attempt here)."""
        self.late = "ended" if self.sees_ends else "accepted"
        """What ``finish`` answers to a result for an attempt the engine ended and this
        process did not finish: ``"ended"`` (refused, nothing written); on Kafka
        ``"accepted"`` (written to the log, where the engine drops it)."""
        self._partitions = h.backend.log.partitions

    def claim(
        self,
        queues: tuple[str, ...] = (protocol.DEFAULT_QUEUE,),
        limit: int = 10,
        *,
        expect: int = 0,
    ) -> list[Attempt]:
        """Claim up to ``limit`` attempts. Where attempts must be fetched first (Kafka),
        claim until ``expect`` of them were handed out; with ``expect=0`` (a test that
        expects nothing), claim for :data:`SETTLE` seconds once the queues' partitions
        are assigned, and return whatever came."""
        if not self.fetches:
            return self._claim(queues, limit)
        out: list[Attempt] = []
        joining = time.monotonic() + CLAIM_TIMEOUT
        until: float | None = None  # set once every queue's partitions are assigned
        while True:
            out += self._claim(queues, limit - len(out))  # the first one joins the groups
            if len(out) >= limit or (expect and len(out) >= expect):
                return out
            now = time.monotonic()
            if until is None:
                if self._joined(queues):
                    until = now + (CLAIM_TIMEOUT if expect else SETTLE)
                else:
                    assert now < joining, f"no partitions of {queues} assigned"
            elif now >= until:
                return out
            time.sleep(0.02)

    def one(self, queues: tuple[str, ...] = (protocol.DEFAULT_QUEUE,)) -> Attempt:
        (attempt,) = self.claim(queues, expect=1)
        return attempt

    def _claim(self, queues: tuple[str, ...], limit: int) -> list[Attempt]:
        out = []
        for claimed in self.queue.claim(list(queues), self.name, limit, 30.0):
            envelope, request = tasks.parse_request(self.codec, claimed.request)
            out.append(Attempt(claimed, envelope, request))
        return out

    def _joined(self, queues: tuple[str, ...]) -> bool:
        """Whether the worker group of each queue assigned this process every partition."""
        assigned = self.queue.assigned  # type: ignore[attr-defined] # KafkaTaskQueue's
        return all(len(assigned(queue)) == self._partitions for queue in queues)

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


def stat(h: Harness, name: str) -> int:
    """An engine count summed over the engines of the harness (on Kafka one per
    partition; ``h.engine`` is only the first one's)."""
    return sum(int(engine.stats[name]) for engine in h.host.engines.values())
