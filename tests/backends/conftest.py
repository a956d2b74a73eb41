"""The backend under test, on memory, SQLite and Kafka (a real broker).

A :class:`Subject` is what the conformance suite exercises: the :class:`Backend` a client
opens, and the :class:`EngineBackend` one engine runs on, obtained the way a host
obtains it (``Backend.claim``: the embedded backends hand themselves over, Kafka assigns
partitions to a group member). A test touches the engine side only if it needs it, so
the log-only tests on Kafka do not join a group.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest

from overture.backends import open_backend
from overture.backends.kafka.reading import high_watermarks, reader
from overture.ports import Backend, Capabilities, Claim, EngineBackend, StateView

from ..conftest import kafka_url

KINDS = ["memory", "sqlite", "kafka"]
PARTITIONS = 4


class Subject:
    """One backend under test (see the module docstring)."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.backend: Backend = open_backend(url, partitions=PARTITIONS)
        self._claim: Claim | None = None
        self._engines: dict[int, EngineBackend] = {}
        self._opened: list[Backend] = []

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    def engine(self, partition: int = 0) -> EngineBackend:
        """The engine side of ``partition`` (embedded: the backend itself, partition 0)."""
        if self._claim is None:
            arrived = threading.Event()

            def assigned(backends: Mapping[int, EngineBackend]) -> None:
                self._engines.update(backends)
                arrived.set()

            self._claim = self.backend.claim(
                "engine:conformance", assigned, lambda partitions: None, lambda error: None
            )
            assert arrived.wait(60), "no partition was assigned within 60 s"
            deadline = time.monotonic() + 60
            wanted = 1 if not self.backend.capabilities.partitioned else PARTITIONS
            while len(self._engines) < wanted and time.monotonic() < deadline:
                time.sleep(0.05)
        if not self.backend.capabilities.partitioned:
            return self._engines[0]
        return self._engines[partition]

    def settle(self) -> None:
        """Wait until what the engines committed is visible to readers: on Kafka a
        transaction reports its commit before the cluster has written its markers, and
        until then a ``read_committed`` reader (the client's view) stops before it. The
        wait ends when no changelog partition has a transaction open (its last stable
        offset reached its high watermark), not after a fixed sleep. The events topic
        is waited for the same way: a commit's appends are in the same transaction."""
        if not self.backend.capabilities.partitioned:
            return
        settings = self.backend.settings  # type: ignore[attr-defined]
        committed = reader(settings, "settle-lso")
        written = reader(settings, "settle-hwm", committed=False)
        try:
            deadline = time.monotonic() + 30
            for topic in (settings.changelog_topic, settings.events_topic):
                while True:
                    stable = high_watermarks(committed, topic, list(range(PARTITIONS)))
                    if stable == high_watermarks(written, topic, list(range(PARTITIONS))):
                        break
                    assert time.monotonic() < deadline, f"a transaction on {topic} stayed open"
                    time.sleep(0.01)
        finally:
            committed.close()
            written.close()

    def reopened(self) -> StateView:
        """The committed state as a process that opens the backend afresh sees it."""
        backend = open_backend(self.url)
        if backend is not self.backend:  # memory:// is one object per process
            self._opened.append(backend)
        return backend.store

    def close(self) -> None:
        if self._claim is not None:
            self._claim.close()
        for backend in self._opened:
            backend.close()
        self.backend.close()


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    kind = request.param
    if kind == "memory":
        url = f"memory://conf-{tmp_path.name}"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"), partitions=PARTITIONS)
    s = Subject(kind, url)
    yield s
    s.close()


def event(n: int, event_id: str | None = None) -> bytes:
    """A CloudEvent in structured form carrying ``n``: what every log keeps (Kafka's in
    binary mode, read back in structured form), so the suite reads ``data``, not bytes."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id or f"conf-{n}",
            "source": "conformance",
            "type": "conf.n",
            "data": {"n": n},
        }
    )


def data(value: bytes) -> object:
    """The ``n`` an :func:`event` carries."""
    return orjson.loads(value)["data"]["n"]
