"""Shared fixtures: every behaviour test runs on each backend, with and without the
live-instance cache (cache size 0 forces a replay from the journal on every input)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

import overture as ov
from overture.backends import forget_memory_brokers
from overture.testing import Harness

BACKENDS = ["memory", "sqlite"]

Factory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture(autouse=True)
def _fresh_memory_brokers() -> None:
    forget_memory_brokers()


@pytest.fixture(
    params=[("memory", 10_000), ("memory", 0), ("sqlite", 10_000), ("sqlite", 0)],
    ids=["memory", "memory-replay", "sqlite", "sqlite-replay"],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """(broker URL, cache size) for one backend configuration."""
    kind, cache_size = request.param
    url = "memory://test" if kind == "memory" else f"sqlite:///{tmp_path / 'test.db'}"
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
