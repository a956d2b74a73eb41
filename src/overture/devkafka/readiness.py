"""Waiting until a freshly started broker really serves clients.

An open port is not enough: the broker is ready once an admin ``list_topics`` succeeds and a
topic can be created and deleted (right after start-up the controller may still answer
``BROKER_NOT_AVAILABLE`` for a few seconds).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable

from .errors import DevKafkaError

logger = logging.getLogger(__name__)

RETRY_PAUSE = 0.25
"""Seconds between two readiness attempts."""


def port_open(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def probe(bootstrap: str, timeout: float) -> None:
    """One readiness attempt: list topics, then create and delete a scratch topic.

    Args:
        bootstrap: ``host:port`` of the broker.
        timeout: seconds each admin request may take.

    Raises:
        Exception: whatever the admin client raised (``KafkaException`` mostly).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    # confluent_kafka.admin.NewTopic is this class, re-exported without __all__ (untyped).
    from confluent_kafka.cimpl import NewTopic

    # log_level 0: the connection errors of a broker still starting up are expected noise.
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": int(timeout * 1000)}
    )
    admin.list_topics(timeout=timeout)
    topic = f"__overture_ready_{uuid.uuid4().hex[:12]}"
    created = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)], request_timeout=timeout
    )
    try:
        created[topic].result(timeout=timeout)
    except KafkaException as error:
        if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deleted = admin.delete_topics([topic], request_timeout=timeout)
    deleted[topic].result(timeout=timeout)


def wait_ready(
    host: str,
    port: int,
    *,
    timeout: float,
    alive: Callable[[], bool],
    describe_exit: Callable[[], str],
) -> None:
    """Block until the broker at ``host:port`` serves admin requests.

    Args:
        host: the broker's address.
        port: its client port.
        timeout: seconds to wait in all.
        alive: whether the broker process still runs (checked between attempts).
        describe_exit: the error message for a broker that exited during start-up.

    Raises:
        DevKafkaError: the process exited, or the broker was not ready in time.
    """
    deadline = time.monotonic() + timeout
    last_error = "the port never opened"
    while True:
        if not alive():
            raise DevKafkaError(describe_exit())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DevKafkaError(
                f"the broker on {host}:{port} was not ready after {timeout:g} s ({last_error})"
            )
        if port_open(host, port):
            try:
                probe(f"{host}:{port}", timeout=max(1.0, min(10.0, remaining)))
                return
            except Exception as error:  # the admin client raises several kinds
                last_error = " ".join(str(error).split()) or type(error).__name__
                logger.debug("broker not ready yet: %s", last_error)
        time.sleep(RETRY_PAUSE)
