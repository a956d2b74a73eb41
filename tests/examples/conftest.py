"""The ride-sharing example's end-to-end tests run on SQLite and on the session's Kafka
broker (``kafka_bootstrap``), the Node.js worker (``node_worker``) answering the rider's
notifications on Kafka."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from ..conftest import kafka_url
from ..kafka.conftest import node_worker
from .ridekit import Rides, rides

__all__ = ["Start", "node_worker", "start"]

Start = Callable[..., AbstractContextManager[Rides]]


@pytest.fixture(params=["sqlite", "kafka"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Start:
    """``start(**options)``: the example on this test's backend (see ``ridekit.rides``)."""
    if request.param == "sqlite":
        url, node_dir = f"sqlite:///{tmp_path / 'rides.db'}", None
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"))
        node_dir = request.getfixturevalue("node_worker")

    def started(**options: float) -> AbstractContextManager[Rides]:
        return rides(url, tmp_path, node_dir=node_dir, **options)

    return started
