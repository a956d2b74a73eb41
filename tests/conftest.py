"""Shared fixtures: every behaviour test runs on each backend, with and without the
live-instance cache (cache size 0 forces a replay from the journal on every input).

The Kafka configurations run against a real broker (``overture dev kafka``; started once
per session by ``kafka_bootstrap``), each test in a fresh namespace of two partitions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

import overture as ov
from overture.backends import forget_memory_backends
from overture.devkafka import start_broker, stop_broker
from overture.testing import Harness

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_STATE_DIR = Path(
    os.environ.get("OVERTURE_TEST_KAFKA_DIR") or REPO_ROOT / ".overture" / "test-kafka"
)
"""The state directory of the broker the Kafka tests share (``OVERTURE_TEST_KAFKA_DIR``:
another checkout's, as ``scripts/mutants`` gives its scratch copies)."""
KAFKA_START_TIMEOUT = 180.0
"""Seconds the broker may take to become ready (a loaded 2-core machine is slow)."""

BACKENDS = ["memory", "sqlite"]

Factory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(autouse=True)
def _fresh_memory_backends() -> None:
    forget_memory_backends()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address (``127.0.0.1:PORT``) of a running real Kafka broker.

    Starts the broker of ``<repo>/.overture/test-kafka`` unless it already runs (its jars
    and data stay there, so only the first run on a machine downloads), and stops it at
    the end of the session only if this session started it.
    """
    result = start_broker(KAFKA_STATE_DIR, timeout=KAFKA_START_TIMEOUT)
    yield result.bootstrap
    if result.started:
        stop_broker(KAFKA_STATE_DIR)


def kafka_url(bootstrap: str, partitions: int = 2) -> str:
    """A fresh namespace on the test broker."""
    return f"kafka://{bootstrap}/t{uuid.uuid4().hex[:10]}?partitions={partitions}"


@pytest.fixture(
    params=[
        ("memory", 10_000),
        ("memory", 0),
        ("sqlite", 10_000),
        ("sqlite", 0),
        ("kafka", 10_000),
        ("kafka", 0),
    ],
    ids=["memory", "memory-replay", "sqlite", "sqlite-replay", "kafka", "kafka-replay"],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """(backend URL, cache size) for one backend configuration."""
    kind, cache_size = request.param
    if kind == "memory":
        url = "memory://test"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"))
    return url, cache_size


@pytest.fixture
def harness(backend: tuple[str, int]) -> Factory:
    """``async with harness(app) as h:`` runs an engine for ``app`` on the backend."""
    url, cache_size = backend

    @asynccontextmanager
    async def make(app: ov.App, **kwargs: object) -> AsyncIterator[Harness]:
        kwargs.setdefault("cache_size", cache_size)
        async with Harness(app, url, **kwargs) as h:  # type: ignore[arg-type]
            yield h

    return make
