"""``EngineOptions``: one frozen options object, validated once and passed whole; and the
engine's public lifecycle that the host and the harness use (``abandon``,
``has_unread``) instead of its private fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import overture as ov
from overture.backends import open_backend
from overture.client import Client
from overture.errors import ConfigError
from overture.runtime.engine import Engine
from overture.runtime.host import Host
from overture.runtime.options import EngineOptions
from overture.testing import Harness

from ..conftest import kafka_url


def test_options_are_frozen_and_keyword_only() -> None:
    options = EngineOptions(cache_size=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.cache_size = 6  # type: ignore[misc]
    with pytest.raises(TypeError):
        EngineOptions(5)  # type: ignore[misc]
    assert EngineOptions(partitions=[1, 0]).partitions == (1, 0)  # an immutable copy


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cache_size", -1, "cache_size"),
        ("batch_size", 0, "batch_size"),
        ("threads", 0, "at least one thread"),
        ("sync_fold", -0.5, "sync_fold"),
        ("sync_fold", float("nan"), "sync_fold"),
        ("sync_fold", "0.1", "sync_fold"),
        ("batch_size", "3", "batch_size"),
        ("cache_size", True, "cache_size"),
        ("gc_threshold", -5, "gc_threshold"),
        ("group", "", "group"),
        ("partitions", (), "at least one partition"),
        ("partitions", (0, -1), "partitions"),
    ],
)
def test_options_are_validated_when_made(field: str, value: object, message: str) -> None:
    with pytest.raises(ov.ConfigError, match=message):
        EngineOptions(**{field: value})  # type: ignore[arg-type]


def test_the_engine_takes_an_options_object_and_keywords_override_it() -> None:
    backend = open_backend("memory://options")
    base = EngineOptions(batch_size=7, cache_size=100)
    engine = Engine(ov.App("o"), backend, options=base, cache_size=3)
    assert engine.options == EngineOptions(batch_size=7, cache_size=3)
    assert (engine.batch_size, engine.cache_size) == (7, 3)
    assert Engine(ov.App("o"), backend, options=base).options is base
    assert Engine(ov.App("o"), backend).options == EngineOptions()


async def test_host_and_harness_pass_the_options_whole() -> None:
    options = EngineOptions(cache_size=0, batch_size=3, sync_fold=None)
    host = Host(ov.App("h"), open_backend("memory://host-options"), options=options, drive=True)
    await host.start()
    try:
        assert host.engines[0].options is options
    finally:
        await host.stop(grace=0)
    async with Harness(ov.App("h2"), options=options, threads=2) as h:
        assert h.engine.options == dataclasses.replace(options, threads=2)
        assert h.engine.executor.threads == 2


async def test_abandon_drops_the_engine_as_a_crash_would(tmp_path: Path) -> None:
    """An abandoned engine commits nothing more and lets go of the database, so a new
    engine starts at once and finds the work the first one left unfinished."""
    app = ov.App("abandon")
    calls: list[str] = []

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> None:
        await ctx.step(record)

    async def record() -> None:
        calls.append("ran")

    url = f"sqlite:///{tmp_path / 'a.db'}"
    backend = open_backend(url)
    try:
        engine = Engine(app, backend)
        await engine.start()
        with Client(backend, app=app) as client:
            client.send("go", {}, key="k")
            assert engine.has_unread()
            await engine.abandon()  # before it read anything
            assert engine.cached_instances == 0
            with pytest.raises(RuntimeError, match="failed earlier"):
                await engine.run_until_idle()
            second = Engine(app, backend)  # the lock was released: no EngineBusy
            await second.run_until_idle()
            assert not second.has_unread()
            await second.stop()
            assert [i.status for i in client.instances()] == ["completed"]
        assert calls == ["ran"]
    finally:
        backend.close()


def test_an_engine_on_a_kafka_client_backend_says_to_use_a_host(kafka_bootstrap: str) -> None:
    backend = open_backend(kafka_url(kafka_bootstrap))
    try:
        with pytest.raises(ov.ConfigError, match="run it with Host"):
            ov.Engine(ov.App("k"), backend)
    finally:
        backend.close()


def test_an_engine_given_a_url_says_to_open_the_backend() -> None:
    with pytest.raises(ConfigError, match=r"open_backend\('memory://x'\)"):
        ov.Engine(ov.App("x"), "memory://x")  # type: ignore[arg-type]
