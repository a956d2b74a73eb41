"""Fixtures of the CLI tests: a database URL, a CLI invoker, and the order example."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import REPO_ROOT, Invoke
from tests.conftest import kafka_url


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A fresh embedded database (absolute path, so sqlite:////tmp/...)."""
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture(params=["sqlite", "kafka"])
def sqlite_and_kafka_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The embedded database, and a fresh one-partition Kafka namespace, for commands
    that must show the same on both (a module opts in by aliasing ``url`` to it)."""
    if request.param == "kafka":
        return kafka_url(request.getfixturevalue("kafka_bootstrap"), partitions=1)
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def invoke(url: str) -> Invoke:
    return Invoke(url)


@pytest.fixture
def orders(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``examples.orders``, importable the way ``--app examples.orders:app`` finds it (the
    working directory is the repository root)."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("examples.orders")
