"""The codec door: the one object through which events become bytes and back, and
envelopes become typed events and back.

Every path goes through a :class:`Codec`: the clients (sending, reading the log back,
control requests), the engine (records it consumes, events it emits or forwards, buffered
events, handler runs, dead letters) and replay (the machine gets the engine's codec, so
the trigger and every waited-for event of a journal, however old, are made typed events
by it). That makes it the place where the capabilities still to come plug in:

- **payload codecs** (compression, encryption; Temporal's "payload codecs"): a
  :class:`PayloadCodec` given to the codec (``Codec(app, payload=...)``) encodes every
  event's data bytes in :meth:`Codec.to_bytes`, on the way to the log, and decodes them
  in :meth:`Codec.from_bytes`, on the way back (the event then carries the
  ``payloadcodec`` extension and its data as ``data_base64``; see
  :data:`overture.protocol.PAYLOADCODEC`). The clients and engines of one app need the
  same payload codec; a reader without it refuses such an event (the engine
  dead-letters it, with its bytes as they are). What is *not* covered yet: the journal
  and the engine's state keep the decoded event (encrypting state at rest is the
  store's part, a later issue);
- **upcasters** (an old event's data brought up to the current contract) go in
  :meth:`Codec.typed`, which every typed event passes through, live or replayed (a
  journal keeps the event as it arrived, so an upcaster applies to old journals too);
- **a schema registry** checks in :meth:`Codec.validate` (what a client may send) and
  :meth:`Codec.typed` (what the engine accepts).

Until upcasters and a registry exist, those two are plain methods; a subclass that
overrides them is what such a capability will look like (the tests replay old journals
through a counting, upcasting subclass). Rejected: a module of free ``encode``/``decode``
functions called from each path (what there was before), because nothing could then
apply to all of them at once.

The codec sits just above :mod:`overture.events`: it needs nothing of the app but the
:class:`Contracts` protocol, so the pure core can import it.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

import orjson

from . import events, protocol
from .errors import EventValidationError, MalformedEvent, UnknownEventType
from .events import Envelope, Event
from .ports import NewRecord
from .tracecontext import traceparent_problem

E = TypeVar("E", bound=Event)

log = logging.getLogger("overture.codec")

_CODED = f'"{protocol.PAYLOADCODEC}"'.encode()
"""In the bytes of every payload-coded event; a record without it needs no parse here."""


class PayloadCodec(Protocol):
    """Turns an event's data bytes (its JSON) into other bytes and back: compression,
    encryption. Applied to every event a :class:`Codec` writes, and undone for every
    event it reads; deterministic output is not required (a replay does not re-encode:
    the log keeps the bytes first written)."""

    @property
    def name(self) -> str:
        """Names the encoding in the events it wrote (``payloadcodec``), so that a reader
        knows which codec undoes it (and refuses the event if it has no such codec)."""

    def encode(self, data: bytes) -> bytes:
        """The bytes that travel, from the data's JSON bytes."""

    def decode(self, data: bytes) -> bytes:
        """The data's JSON bytes again.

        Raises:
            Exception: bytes this codec cannot decode (a wrong key, corruption); the
                event is refused with the message.
        """


class Contracts(Protocol):
    """What the codec needs of an app (:class:`overture.App` is one)."""

    def event_class(self, event_type: str) -> type[Event] | None:
        """The registered contract of a type, if any."""

    @property
    def event_types(self) -> list[str]:
        """Every type the app knows (registered or only named)."""

    def waiters(self, event_type: str) -> list[str]:
        """The processes that wait for events of this type (waits are keyed)."""

    @property
    def payload_codec(self) -> PayloadCodec | None:
        """The payload codec the app declared, if any."""


class Codec:
    """Envelopes to bytes and back, and to typed events (see the module docstring).

    Args:
        app: the contracts typed events are validated against (``None``: every event is
            a plain :class:`~overture.Event` and nothing is validated but the envelope).
        payload: encodes the data of every event written and decodes it when read
            (see :class:`PayloadCodec`); default: the app's ``payload_codec``, else none
            (data travels as plain JSON).
    """

    def __init__(
        self, app: Contracts | None = None, *, payload: PayloadCodec | None = None
    ) -> None:
        self.app = app
        self.payload = payload if payload is not None or app is None else app.payload_codec

    # -- bytes (the log, the inbox, handler runs, dead letters) -----------------------------

    def to_bytes(self, envelope: Envelope) -> bytes:
        """The bytes that go to the log: CloudEvents structured JSON.

        Raises:
            EventValidationError: the data is not JSON.
        """
        payload = self.payload
        if payload is None:
            return events.encode(envelope)
        structured = envelope.to_dict()
        try:
            data = orjson.dumps(structured.pop("data"))
        except TypeError as exc:
            raise EventValidationError(f"event {envelope.type!r} data is not JSON: {exc}") from exc
        structured[protocol.PAYLOADCODEC] = payload.name
        structured["data_base64"] = base64.b64encode(payload.encode(data)).decode()
        return orjson.dumps(structured)

    def from_bytes(self, raw: bytes) -> Envelope:
        """The envelope in bytes read from the log.

        A ``traceparent`` that is not W3C trace context is dropped (the spec's rule for a
        receiver: ignore it, do not fail the message); the client refuses to send one.

        Raises:
            MalformedEvent: not a CloudEvent in JSON, numbers that would not travel
                exactly, or data of a payload codec this codec has not (or cannot undo).
        """
        if _CODED in raw:
            coded = self._payload_coded(raw)
            if coded is not None:
                return self._received(coded)
        return self._received(events.decode(raw))

    def _payload_coded(self, raw: bytes) -> Envelope | None:
        """The envelope of a payload-coded event, its data decoded; None if ``raw`` is
        not one (its data merely mentions the name)."""
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None  # decode reports where
        if not isinstance(parsed, dict) or protocol.PAYLOADCODEC not in parsed:
            return None
        name = parsed.pop(protocol.PAYLOADCODEC)
        payload = self.payload
        if payload is None or name != payload.name:
            have = "none" if payload is None else repr(payload.name)
            raise MalformedEvent(
                f"the event's data is encoded by payload codec {name!r}, which this codec "
                f"lacks (it has {have}): give clients and engines the same payload codec"
            )
        encoded = parsed.pop("data_base64", None)
        if not isinstance(encoded, str):
            raise MalformedEvent(f"payload-coded event ({name!r}) lacks a 'data_base64' string")
        try:
            coded = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise MalformedEvent(
                f"payload codec {name!r}: 'data_base64' is not base64: {exc}"
            ) from exc
        try:
            data = payload.decode(coded)
        except Exception as exc:  # the codec's own failure: a wrong key, corruption
            raise MalformedEvent(
                f"payload codec {name!r} could not decode the data: {type(exc).__name__}: {exc}"
            ) from exc
        events.check_exact_numbers(b'{"data":' + data + b"}")
        try:
            parsed["data"] = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(
                f"payload codec {name!r} decoded data that is not JSON: {exc}"
            ) from exc
        return Envelope.from_dict(parsed)

    def from_dict(self, structured: Any) -> Envelope:
        """The envelope of an event in structured form (a journal entry, a forwarded one).

        Raises:
            MalformedEvent: not a CloudEvent.
        """
        return self._received(Envelope.from_dict(structured))

    def records(self, envelopes: Iterable[Envelope]) -> list[NewRecord]:
        """The log records of envelopes to send (the event id is the dedup key)."""
        return [NewRecord(e.partitionkey, self.to_bytes(e), e.id, e.type) for e in envelopes]

    @staticmethod
    def _received(envelope: Envelope) -> Envelope:
        if envelope.traceparent is None or traceparent_problem(envelope.traceparent) is None:
            return envelope
        log.debug("ignored the invalid traceparent of event %s", envelope.id)
        return Envelope(
            envelope.type,
            envelope.data,
            envelope.id,
            envelope.source,
            envelope.subject,
            envelope.time,
            envelope.datacontenttype,
            envelope.dataschema,
            envelope.partitionkey,
            None,
            envelope.tenant,
        )

    # -- typed events ---------------------------------------------------------------------

    def event(self, envelope: Envelope) -> Event:
        """The typed event of an envelope: its type's contract in the app, else a plain
        :class:`~overture.Event`.

        Raises:
            EventValidationError: the data violates the contract.
        """
        cls = None if self.app is None else self.app.event_class(envelope.type)
        return self.typed(envelope, Event if cls is None else cls)

    def typed(self, envelope: Envelope, cls: type[E]) -> E:
        """``envelope`` as an event of contract ``cls``; every typed event, live or
        replayed, is made here.

        Raises:
            EventValidationError: the data violates the contract.
        """
        return cls.from_envelope(envelope)

    def to_journal(self, envelope: Envelope) -> dict[str, Any]:
        """The form an event is journaled in (a trigger, a waited-for event, a forwarded
        one): its structured form, data decoded; :meth:`from_journal` reads it back."""
        return envelope.to_dict()

    def from_journal(self, structured: Any, cls: type[E]) -> E:
        """A journaled event (a trigger, a waited-for event) as an event of ``cls``, for
        replay and for a wait being resolved.

        Raises:
            EventError: not a CloudEvent, or data that no longer fits ``cls``.
        """
        return self.typed(self.from_dict(structured), cls)

    # -- what may be sent -----------------------------------------------------------------

    def check(self, envelope: Envelope, *, reserved: bool = False) -> None:
        """Refuse what the engine would dead-letter (or ignore) for the envelope alone,
        and control events unless the caller means to send one (``reserved``).

        Raises:
            MalformedEvent: an invalid type, id, source, time or traceparent.
            EventValidationError: a reserved type not ``reserved``, a control event whose
                data does not match its message, numbers that would not travel exactly.
        """
        problem = events.type_problem(envelope.type)
        if problem is not None:
            raise MalformedEvent(problem)
        for name in ("id", "source"):  # required: the engine dead-letters an empty one
            value = getattr(envelope, name)
            if not isinstance(value, str) or not value:
                raise MalformedEvent(
                    f"CloudEvent attribute {name!r} must be a non-empty string, not {value!r}"
                )
        if not isinstance(envelope.time, datetime):
            raise MalformedEvent(
                f"CloudEvent attribute 'time' must be a datetime, not {envelope.time!r}"
            )
        if envelope.traceparent is not None:
            problem = traceparent_problem(envelope.traceparent)
            if problem is not None:
                raise MalformedEvent(problem)
        if protocol.is_reserved(envelope.type):
            if not reserved:
                raise EventValidationError(
                    f"event type {envelope.type!r} is reserved for control events (the "
                    f"{protocol.RESERVED_PREFIX!r} namespace); pass reserved=True "
                    "(overture send --reserved) to send one deliberately"
                )
            protocol.parse_control(envelope.type, envelope.data)
        problem = events.number_problem(envelope.data)
        if problem is not None:
            raise EventValidationError(f"event {envelope.type!r}: {problem}")

    def validate(self, envelope: Envelope, *, require_known: bool = False) -> None:
        """Check an event about to be sent against the app's contracts.

        Raises:
            EventValidationError: the data violates the contract, or the event has no key
                although a process waits for its type (waits are keyed, so it would never
                be delivered).
            UnknownEventType: ``require_known`` and the app does not know the type.
        """
        app = self.app
        if app is None:
            return
        cls = app.event_class(envelope.type)
        if cls is None:
            if require_known and envelope.type not in app.event_types:
                raise UnknownEventType(
                    f"unknown event type {envelope.type!r}; known: {', '.join(app.event_types)}"
                )
        else:
            self.typed(envelope, cls)
        # Waits are always keyed (by default on the instance's key), so a keyless event of
        # a waited-for type can never reach one: refuse it rather than lose it silently.
        waiters = app.waiters(envelope.type)
        if not waiters or envelope.partitionkey is not None:
            return
        field = None if cls is None else cls.key_field
        how = "give it a key" if field is None else f"set its key field {field!r} or give a key"
        raise EventValidationError(
            f"event {envelope.type!r} has no key, but process(es) {', '.join(waiters)} wait "
            f"for it by key, so it would never be delivered: {how} (key= / --key)"
        )
