"""A real single-node Apache Kafka broker for development and tests.

Assembled from Maven Central (no Docker, no tarball), run as a plain JVM in KRaft mode
(broker and controller in one process) on 127.0.0.1, with its state in one directory::

    <state>/pom.xml            generated; what Maven downloads
    <state>/libs/              the broker's jars (downloaded once)
    <state>/server.properties  rewritten on every start
    <state>/log4j2.xml         the broker logs into <state>/broker.log
    <state>/data/              topics and KRaft metadata (formatted on the first start)
    <state>/broker.json        pid and ports of the running broker

``overture dev kafka start|stop|status`` is the command line; :func:`ensure_broker` and
:func:`stop_broker` are for tests.
"""

from __future__ import annotations

from .assemble import KAFKA_VERSION
from .broker import (
    BrokerStatus,
    StartResult,
    StopResult,
    broker_status,
    ensure_broker,
    start_broker,
    stop_broker,
)
from .errors import DevKafkaError, MissingToolError
from .state import DEFAULT_STATE_DIR, STATE_DIR_ENV, BrokerRecord, resolve_state_dir

__all__ = [
    "DEFAULT_STATE_DIR",
    "KAFKA_VERSION",
    "STATE_DIR_ENV",
    "BrokerRecord",
    "BrokerStatus",
    "DevKafkaError",
    "MissingToolError",
    "StartResult",
    "StopResult",
    "broker_status",
    "ensure_broker",
    "resolve_state_dir",
    "start_broker",
    "stop_broker",
]
