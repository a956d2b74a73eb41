"""Each consumed record decoded once per batch, for every participant that reads it.

The router (processes, handlers, waits) and the streams runtime both read every record
of a batch: each used to decode the bytes into an envelope, and validate the envelope
into a typed event, on its own, which was half of a stream-only batch's CPU. A
:class:`Decoder` keeps what it made in the :class:`~.staging.Stage` (so it lives exactly
as long as the batch) and hands the same envelope and event to each participant.

What it keeps is dropped once every participant has consumed the records
(``Stage.consumed``). The envelopes and events handed out are shared: participants read
them, never change them (an event that must become an instance's own is copied first,
as the router does for a trigger with one process).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..codec import Codec
from ..errors import MalformedEvent
from ..events import Envelope, Event
from ..ports import Record
from .staging import Stage


class Decoder:
    """Decodes records and validates envelopes once per batch (see the module docstring).

    Args:
        codec: the engine's codec (bytes to envelopes, envelopes to typed events).
        shared: the event types more than one participant makes typed events of (the
            stream operators' sources): only theirs are kept for the next participant;
            keeping every record's event alive through the batch cost more in garbage
            collection than it saved.
    """

    def __init__(self, codec: Codec, shared: Collection[str] = ()) -> None:
        self.codec = codec
        self._shared = frozenset(shared)

    def envelopes(self, stage: Stage, records: Sequence[Record]) -> list[Envelope | MalformedEvent]:
        """The envelope of each record (or why it is not one), in order; the same list
        for every participant given these records in this batch."""
        if not records:
            return []
        first = records[0]
        key = (first.partition, first.offset, len(records))
        decoded = stage.decoded.get(key)
        if decoded is None:
            decoded = stage.decoded[key] = [self.envelope_of(record) for record in records]
        return decoded

    def envelope_of(self, record: Record) -> Envelope | MalformedEvent:
        """One record's envelope, or why it is not one (not memoized)."""
        if record.error is not None:  # the log could not make an event of what arrived
            return MalformedEvent(record.error)
        try:
            return self.codec.from_bytes(record.value)
        except MalformedEvent as error:
            return error

    def event(self, stage: Stage, record: Record, envelope: Envelope) -> Event:
        """The typed event of a record's envelope (its contract in the app, else a plain
        event), validated once per batch.

        Raises:
            EventError: the data violates the contract (not memoized: each caller
                dead-letters or skips it as it does).
        """
        if envelope.type not in self._shared:
            return self.codec.event(envelope)
        key = (record.partition, record.offset)
        event = stage.events.get(key)
        if event is None or event.envelope is not envelope:
            event = stage.events[key] = self.codec.event(envelope)
        return event
