"""Dead letters: inputs the engine cannot use, kept with the reason and their bytes.

A dead letter is staged in the batch like any other row, so it is committed atomically
with the offset of the record it replaces: a record is either routed or dead-lettered,
never lost and never both. Replaying one (the ``overture.dlq.replay`` control event) is
the router's job; this object finds the letter and rebuilds the record it was made of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..binding import from_record
from ..codec import Codec
from ..errors import MalformedEvent
from ..events import Envelope
from ..ports import Batch, DeadLetter, Record, Store, Wire
from .observer import Observer
from .staging import Stage

log = logging.getLogger("overture.engine")


class DeadLetters:
    """Stages dead letters and reads them back for a replay.

    Args:
        store: where committed dead letters are read from.
        in_flight: the batch being committed, if any (its letters are not readable from
            the store yet).
        observer: told of every dead letter.
    """

    def __init__(
        self,
        codec: Codec,
        store: Store,
        in_flight: Callable[[], Batch | None],
        observer: Observer,
    ) -> None:
        self._codec = codec
        self._store = store
        self._in_flight = in_flight
        self._observer = observer

    def add(
        self,
        stage: Stage,
        dl_id: str,
        source: str,
        reason: str,
        envelope: Envelope | None,
        record: Record | None,
        now: float,
        *,
        payload: bytes | None = None,
        attempts: int = 0,
    ) -> None:
        """Stage a dead letter: the record as it arrived (on Kafka its key, headers and
        value), or ``payload`` for a handler run that gave up."""
        if envelope is None and payload is not None:
            try:
                envelope = self._codec.from_bytes(payload)
            except MalformedEvent:
                envelope = None
        value = record.value if record is not None else (payload or b"")
        wire = record.wire if record is not None else None
        if wire is not None:  # keep the record as it arrived, not its structured form
            value = wire.value or b""
        letter = DeadLetter(
            dl_id,
            now,
            reason,
            attempts,
            source,
            envelope.type if envelope else None,
            envelope.partitionkey if envelope else (record.key if record else None),
            value,
            record.partition if record else None,
            record.offset if record else None,
            None if wire is None else wire.key,
            None if wire is None else wire.headers,
        )
        stage.batch.dead_letters[dl_id] = letter
        log.warning("dead-lettered %s (%s): %s", dl_id, source, reason)
        self._observer.dead_letter(dl_id, source, reason)

    def take(self, stage: Stage, dl_id: str) -> DeadLetter | None:
        """The dead letter ``dl_id`` (newest state: this batch, the one in flight, the
        store), removed in this batch; None if there is none."""
        letter: DeadLetter | None = None
        committing = self._in_flight()
        for batch in (stage.batch, committing):
            if batch is not None and dl_id in batch.dead_letters:
                letter = batch.dead_letters[dl_id]
                break
        else:
            letter = self._store.dead_letter(dl_id)
        if letter is not None:
            stage.batch.dead_letters[dl_id] = None
        return letter


def record_of(letter: DeadLetter, now: float) -> Record:
    """The record a dead letter was made of, read again: one kept as it arrived on Kafka
    (``headers`` set) goes through the CloudEvents binding again, so a replay sees what
    a fresh delivery of those bytes would."""
    partition, offset = letter.partition or 0, letter.offset or 0
    if letter.headers is None:
        return Record(partition, offset, letter.key, letter.value, now)
    wire = Wire(letter.raw_key, letter.headers, letter.value)
    read = from_record(wire.key, wire.headers, wire.value)
    return Record(partition, offset, read.key, read.value, now, wire, read.error)
