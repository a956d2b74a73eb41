"""Reading topics to their end: the changelog (state restore, client queries) and the
events topic (``overture events``).

"The end" is the partition's high watermark as a ``read_committed`` consumer sees it (the
last stable offset), queried when a read starts. Transaction markers occupy offsets, so
the position after the last record can lie beyond that record; the consumer's end-of-
partition event tells where it really stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from ...binding import Read, from_record, headers_of
from ...errors import BrokerUnavailable
from ...ports import Record, Wire
from .settings import KafkaSettings

READ_TIMEOUT = 30.0
"""Seconds a read to the end may take before the cluster counts as unavailable."""


_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def position(message: Message) -> tuple[int, int]:
    """(partition, offset) of a fetched message."""
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return partition, offset


def record_of(message: Message, logical: int) -> Record:
    """A fetched events-topic message as the engine reads it (logical partition
    ``logical``), its bytes kept as they arrived. Never raises: a record that is no
    readable event carries the reason (:attr:`Record.error`) for the engine to
    dead-letter it, and the partition goes on."""
    key, value = message.key(), message.value()
    try:
        headers = headers_of(message.headers())
    except Exception as exc:
        # The client decodes header *names* as UTF-8 (Java and Python producers cannot
        # write others; a raw protocol client could): such a record is dead-lettered,
        # with its key and value, rather than stop the partition.
        headers = ()
        read = Read(value or b"", None, f"the record's headers cannot be read: {exc}")
    else:
        read = from_record(key, headers, value)
    kind, millis = message.timestamp()
    # a record without a timestamp (TIMESTAMP_NOT_AVAILABLE) is stamped when read
    stamp = millis / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and millis >= 0 else time.time()
    offset = message.offset()
    assert offset is not None
    return Record(
        logical, offset, read.key, read.value, stamp, Wire(key, headers, value), read.error
    )


def reader(settings: KafkaSettings, name: str, *, committed: bool = True) -> Consumer:
    """A consumer for reading by position (no group membership, no commits); with
    ``committed=False`` it sees the high watermark rather than the last stable offset."""
    return Consumer(
        settings.config(
            **{
                "group.id": f"{settings.namespace}.{name}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # a read to the end waits for the end-of-partition
            }
        )
    )


def high_watermarks(
    consumer: Consumer, topic: str, partitions: Sequence[int], timeout: float = READ_TIMEOUT
) -> dict[int, int]:
    """The current end of each partition (for ``read_committed``: its last stable offset)."""
    out = {}
    deadline = time.monotonic() + timeout
    for p in partitions:
        while True:
            try:
                out[p] = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout, cached=False
                )[1]
                break
            except KafkaException as exc:
                # a topic created a moment ago may not have a leader yet
                error = exc.args[0]
                transient = error.retriable() or error.code() in _NO_LEADER_YET
                if not transient or time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"cannot read the end of {topic}[{p}]: {exc.args[0].str()}"
                    ) from exc
                time.sleep(0.1)
    return out


def read_to_end(
    consumer: Consumer,
    topic: str,
    start: dict[int, int],
    *,
    limit: int | None = None,
    timeout: float = READ_TIMEOUT,
) -> Iterator[Message]:
    """Yield the records of ``topic`` from ``start`` (partition → offset) to the end that
    the partitions have now (at most ``limit``); a partition already at its end is skipped.

    Raises:
        BrokerUnavailable: no progress for ``timeout`` seconds.
    """
    ends = high_watermarks(consumer, topic, list(start), timeout)
    todo = {p for p, offset in start.items() if offset < ends[p]}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(todo)])
    count = 0
    deadline = time.monotonic() + timeout
    try:
        while todo:
            message = consumer.poll(0.2)
            if message is None:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"reading {topic} made no progress for {timeout:g}s "
                        f"(partitions {sorted(todo)} not at their end)"
                    )
                continue
            deadline = time.monotonic() + timeout
            error = message.error()
            p = message.partition()
            assert p is not None
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    offset = message.offset()
                    if offset is not None and offset >= ends.get(p, 0):
                        todo.discard(p)
                    continue
                if error.fatal() or not error.retriable():
                    raise BrokerUnavailable(f"reading {topic}: {error.str()}")
                continue
            offset = message.offset()
            assert offset is not None
            if p not in todo:
                continue
            yield message
            count += 1
            if offset + 1 >= ends[p]:
                todo.discard(p)
            if limit is not None and count >= limit:
                return
    finally:
        consumer.unassign()


def read_changelog(
    consumer: Consumer, topic: str, start: dict[int, int]
) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """The changelog records (key, value) of each partition from ``start`` to the end;
    ``start`` is advanced past what was read."""
    out: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in start}
    for message in read_to_end(consumer, topic, dict(start)):
        p, offset = position(message)
        key = message.key()
        assert key is not None  # every changelog record is keyed by its row
        out[p].append((key, message.value()))
        start[p] = offset + 1
    return out
