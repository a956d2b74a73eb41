"""Backends: ``memory://`` (tests, one Python process), ``sqlite:///path`` (embedded) and
``kafka://host:port[/namespace]`` (distributed; see ``overture.backends.kafka``)."""

from __future__ import annotations

import threading
import warnings
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlparse

from ..errors import ConfigError
from ..ports import Backend
from ..retention import DEFAULT_RETENTION

DEFAULT_URL = "sqlite:///overture.db"
_memory: dict[str, Backend] = {}
_memory_lock = threading.Lock()


def open_backend(
    url: str,
    *,
    partitions: int | None = None,
    retention: timedelta | None = DEFAULT_RETENTION,
) -> Backend:
    """Open the backend a URL names.

    ``memory://[name]`` is shared by every opener in the same Python process;
    ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` is a file (created on demand).
    ``kafka://host:port[/namespace][?partitions=N&replication=R]`` is a Kafka cluster.
    ``partitions`` applies when the log is created; an existing log keeps its count.
    ``retention`` is how long the engines keep finished instances (``None``: forever); on
    Kafka the topics Overture creates get a ``retention.ms`` derived from it, and existing
    ones are checked against it when an engine starts (docs/kafka.md, "Retention"). The
    embedded backends keep nothing by age: their engine deletes (``EngineOptions``).
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from .memory import MemoryBackend

        name = parsed.netloc + parsed.path
        with _memory_lock:
            backend = _memory.get(name)
            if backend is None:
                backend = _memory[name] = MemoryBackend(url, partitions or 1)
            return backend
    if parsed.scheme == "sqlite":
        from .sqlite import SqliteBackend

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"bad sqlite URL {url!r}: use sqlite:///path/to/file.db")
        return SqliteBackend(url, path, partitions or 1)
    if parsed.scheme == "kafka":
        from .kafka.backend import KafkaBackend

        return KafkaBackend(url, partitions=partitions, retention=retention)
    raise ConfigError(
        f"unknown backend URL {url!r}: use sqlite:///path.db, memory:// or kafka://host:port"
    )


def forget_memory_backends() -> None:
    """Drop every ``memory://`` backend (tests)."""
    with _memory_lock:
        _memory.clear()


open_broker = open_backend
"""The name of :func:`open_backend` before 0.2 ("broker" now means the Kafka server only);
kept so that existing code runs."""

_T = TypeVar("_T")


def renamed_broker(owner: str, backend: _T, default: _T, broker: _T | None) -> _T:
    """``backend``, or what a caller still passes under its old name ``broker=``
    (with a ``DeprecationWarning``).

    Raises:
        TypeError: both were given.
    """
    if broker is None:
        return backend
    if backend is not default:
        raise TypeError(f"{owner}() got both backend and broker (its old name): give one")
    warnings.warn(
        f"{owner}(broker=...) is now {owner}(backend=...)", DeprecationWarning, stacklevel=3
    )
    return broker
