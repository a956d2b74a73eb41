"""Each consumed record decoded once per batch, for every participant that reads it.

The router (processes, handlers, waits) and the streams runtime both read every record
of a batch: each used to decode the bytes into an envelope on its own. A
:class:`Decoder` keeps the envelopes it made in the :class:`~.staging.Stage` and hands
the same ones to each participant.

Rejected: sharing the typed events too. Keeping every record's validated event alive
from the router's pass to the streams runtime's doubled the garbage collector's young
collections (about 1 s of CPU per 200,000 events, more than the second validation
costs), so each participant still makes its own typed event (``Codec.event``).

What it keeps is dropped once every participant has consumed the records
(``Stage.consumed``). The envelopes handed out are shared: participants read them, never
change them (an event that must become an instance's own is copied first, as the router
does for a trigger with one process).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codec import Codec
from ..errors import MalformedEvent
from ..events import Envelope
from ..ports import Record
from .staging import Stage


class Decoder:
    """Decodes records once per batch (see the module docstring).

    Args:
        codec: the engine's codec (bytes to envelopes, envelopes to typed events).
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

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
