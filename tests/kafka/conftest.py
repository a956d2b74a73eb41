"""Fixtures of the Kafka tests: a real single-node broker (see ``overture dev kafka``).

``kafka_bootstrap`` starts the broker of ``<repo>/.overture/test-kafka`` unless it already
runs (its jars and data stay there, so only the first run on a machine downloads), and stops
it at the end of the session only if this session started it: a broker started beforehand
(``OVERTURE_KAFKA_DIR=.overture/test-kafka overture dev kafka start``) is reused and kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overture.devkafka import start_broker, stop_broker

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_STATE_DIR = REPO_ROOT / ".overture" / "test-kafka"
"""The state directory of the broker the Kafka tests share."""

START_TIMEOUT = 180.0
"""Seconds the broker may take to become ready (a loaded 2-core machine is slow)."""


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address (``127.0.0.1:PORT``) of a running real Kafka broker."""
    result = start_broker(TEST_STATE_DIR, timeout=START_TIMEOUT)
    yield result.bootstrap
    if result.started:
        stop_broker(TEST_STATE_DIR)
