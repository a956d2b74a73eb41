"""Producing: a log record to the partition of its key, and the retry on a full queue.

Shared by clients (``KafkaLog.append``) and engines (``Committer``), so both place and
encode a record the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import Producer

from ...binding import to_binary
from ...ports import NewRecord, partition_for


class Placed(NamedTuple):
    """A record as it will be produced: value, key and headers, and its partition."""

    value: bytes | None
    key: bytes | None
    partition: int
    headers: Sequence[tuple[str, bytes | None]] | None

    @property
    def size(self) -> int:
        """Bytes of value, key and headers, as the producer counts them against its
        ``message.max.bytes``."""
        headers = sum(len(name) + len(value or b"") for name, value in self.headers or ())
        return len(self.value or b"") + len(self.key or b"") + headers


def place_record(record: NewRecord, partitions: int, fallback: int) -> Placed:
    """Where and how ``record`` is produced: to ``record.partition`` if set, else its
    key's (``fallback`` spreads keyless records); in binary mode, or, for a record that
    keeps what first arrived (``record.wire``: a re-keyed event), as those very bytes."""
    wire = record.wire
    if wire is not None:
        if record.partition is not None:
            partition = record.partition % partitions
        else:
            partition = partition_for(record.key, partitions, fallback)
        return Placed(wire.value, wire.key, partition, list(wire.headers))
    key, binary, value = to_binary(record.value)
    key = record.key if record.key is not None else key
    if record.partition is not None:
        partition = record.partition % partitions
    else:
        partition = partition_for(key, partitions, fallback)
    return Placed(value, None if key is None else key.encode(), partition, binary)


def produce_record(
    producer: Producer,
    topic: str,
    record: NewRecord,
    partitions: int,
    fallback: int,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Send ``record`` where :func:`place_record` places it."""
    placed = place_record(record, partitions, fallback)
    send(producer, topic, placed.value, placed.key, placed.partition, placed.headers, on_delivery)


def send(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int,
    headers: Any = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """``producer.produce``, waiting for room while its local queue is full."""
    extra: dict[str, Any] = {} if on_delivery is None else {"on_delivery": on_delivery}
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers, **extra)
            return
        except BufferError:
            producer.poll(0.05)  # the local queue is full: let it drain
