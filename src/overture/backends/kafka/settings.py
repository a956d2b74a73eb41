"""Settings of the Kafka backend: the URL, client properties from a file or the environment.

``kafka://host:port[,host:port…][/namespace][?partitions=N&replication=R]``

- ``namespace`` (default ``overture``) names the topics and the consumer group: events go
  to ``<namespace>.events``, re-keyed events to ``<namespace>.internal``, state to the
  compacted ``<namespace>.changelog``; the engines form the group ``<namespace>.engine``.
  One app per namespace.
- ``partitions`` / ``replication`` apply when Overture creates the topics (defaults 6 / 1).
- The retention the backend is opened with (``open_backend(url, retention=)``, ``overture
  run --retention``) sets the ``retention.ms`` of the topics Overture creates, and is what
  an engine checks existing topics against (``topics.py``).

Client properties (TLS, SASL/SCRAM, client ids, timeouts: any librdkafka setting) come from
a properties file named by ``OVERTURE_KAFKA_CONFIG`` (``key=value`` lines, ``#`` comments)
and from ``OVERTURE_KAFKA_<PROPERTY>`` variables, ``_`` for ``.``: for example
``OVERTURE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512``. The environment wins over the file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from ... import protocol
from ...errors import ConfigError
from ...retention import DEFAULT_RETENTION

CONFIG_FILE_ENV = "OVERTURE_KAFKA_CONFIG"
ENV_PREFIX = "OVERTURE_KAFKA_"
DEFAULT_PARTITIONS = 6


class _OncePer(logging.Filter):
    """Let a repeated message through once per ``seconds`` (librdkafka reports every
    reconnection attempt while a broker is down)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # the text after the thread tag names the failure; the client's name varies
        text = str(record.getMessage()).split("]: ", 1)[-1]
        now = time.monotonic()
        if now - self._seen.get(text, -1e9) < self.seconds:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[text] = now
        return True


_client_log = logging.getLogger("overture.kafka.client")
"""librdkafka's own log lines (connection failures, retries) go here, not to stderr."""
_client_log.addFilter(_OncePer(30.0))
_NOT_PROPERTIES = frozenset({CONFIG_FILE_ENV, "OVERTURE_KAFKA_DIR"})  # the latter: dev broker


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where and how to reach the cluster, and what the topics are called."""

    url: str
    bootstrap: str
    """``host:port[,host:port…]``."""
    namespace: str = "overture"
    """Prefix of the topic names and of the consumer group."""
    partitions: int | None = None
    """Partitions of the topics Overture creates (default 6); when given, existing topics
    must have exactly this many."""
    replication: int = 1
    """Replication factor of the topics Overture creates."""
    client: dict[str, str] = field(default_factory=dict)
    """librdkafka properties for every client (security, client ids, …)."""
    retention: timedelta | None = DEFAULT_RETENTION
    """How long the engines keep finished instances (``None``: forever): the topics
    Overture creates get a ``retention.ms`` derived from it (``topics.wanted_configs``)."""

    @property
    def events_topic(self) -> str:
        return protocol.events_topic(self.namespace)

    @property
    def internal_topic(self) -> str:
        return protocol.internal_topic(self.namespace)

    @property
    def changelog_topic(self) -> str:
        return protocol.changelog_topic(self.namespace)

    @property
    def group(self) -> str:
        return protocol.engine_group(self.namespace)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Properties for a confluent-kafka client: ours, the user's, then ``overrides``."""
        out: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _client_log}
        out.update(self.client)
        out.update(overrides)
        return out


def parse(
    url: str,
    *,
    partitions: int | None = None,
    retention: timedelta | None = DEFAULT_RETENTION,
) -> KafkaSettings:
    """Settings from a ``kafka://`` URL and the environment; ``retention`` is the engines'
    (:attr:`KafkaSettings.retention`).

    Raises:
        ConfigError: a malformed URL, option or properties file.
    """
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ConfigError(f"bad kafka URL {url!r}: use kafka://host:port[/namespace]")
    for address in parsed.netloc.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"bad kafka URL {url!r}: {address!r} is not host:port")
    namespace = parsed.path.strip("/") or "overture"
    if not all(c.isalnum() or c in "._-" for c in namespace):
        raise ConfigError(f"bad namespace {namespace!r} in {url!r}: use letters, digits, . _ -")
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(options) - {"partitions", "replication"}
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} in {url!r}")
    try:
        raw = options.get("partitions")
        count = int(raw) if raw is not None else partitions
        replication = int(options.get("replication", 1))
    except ValueError as exc:
        raise ConfigError(f"bad number in {url!r}: {exc}") from exc
    if (count is not None and count < 1) or replication < 1:
        raise ConfigError(f"partitions and replication must be at least 1 in {url!r}")
    return KafkaSettings(
        url, parsed.netloc, namespace, count, replication, client_properties(), retention
    )


def client_properties(environ: dict[str, str] | None = None) -> dict[str, str]:
    """librdkafka properties from ``OVERTURE_KAFKA_CONFIG`` and ``OVERTURE_KAFKA_*``."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    path = env.get(CONFIG_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {CONFIG_FILE_ENV}={path}: {exc}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith(("#", "!")):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"{path}:{number}: expected key=value, got {line!r}")
            out[name.strip()] = value.strip()
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name not in _NOT_PROPERTIES:
            out[name[len(ENV_PREFIX) :].lower().replace("_", ".")] = value
    return out
