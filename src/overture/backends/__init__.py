"""Backends: ``memory://`` (tests, one Python process), ``sqlite:///path`` (embedded) and
``kafka://host:port[/namespace]`` (distributed; see ``overture.backends.kafka``)."""

from __future__ import annotations

import threading
from urllib.parse import urlparse

from ..errors import ConfigError
from ..ports import Broker

DEFAULT_URL = "sqlite:///overture.db"
_memory: dict[str, Broker] = {}
_memory_lock = threading.Lock()


def open_broker(url: str, *, partitions: int | None = None) -> Broker:
    """Open the broker a URL names.

    ``memory://[name]`` is shared by every opener in the same Python process;
    ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` is a file (created on demand).
    ``kafka://host:port[/namespace][?partitions=N&replication=R]`` is a Kafka cluster.
    ``partitions`` applies when the log is created; an existing log keeps its count.
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from .memory import MemoryBroker

        name = parsed.netloc + parsed.path
        with _memory_lock:
            broker = _memory.get(name)
            if broker is None:
                broker = _memory[name] = MemoryBroker(url, partitions or 1)
            return broker
    if parsed.scheme == "sqlite":
        from .sqlite import SqliteBroker

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"bad sqlite URL {url!r}: use sqlite:///path/to/file.db")
        return SqliteBroker(url, path, partitions or 1)
    if parsed.scheme == "kafka":
        from .kafka.broker import KafkaBroker

        return KafkaBroker(url, partitions=partitions)
    raise ConfigError(
        f"unknown broker URL {url!r}: use sqlite:///path.db, memory:// or kafka://host:port"
    )


def forget_memory_brokers() -> None:
    """Drop every ``memory://`` broker (tests)."""
    with _memory_lock:
        _memory.clear()
