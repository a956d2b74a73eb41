"""Events: the CloudEvents 1.0 envelope, typed event contracts, and the wire codec.

Every event is a CloudEvent. Its *attributes* (id, source, type, subject, time, …, and the
extensions ``partitionkey``, ``traceparent`` and ``tenant``) travel in an :class:`Envelope`;
its *data* is a JSON object. An :class:`Event` subclass is the typed contract of one event
type: its pydantic fields describe ``data``::

    class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
        order_id: str
        quantity: int

``key`` names the data field whose value becomes the event's ``partitionkey`` (its
correlation key) when none is given explicitly.

On the embedded log an event is stored in the CloudEvents JSON *structured* format; see
:func:`encode` and :func:`decode`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from time import time_ns
from typing import Any, ClassVar, Self

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as _PydanticValidationError

from .errors import ConfigError, EventValidationError, MalformedEvent
from .protocol import EXTENSIONS, PARTITIONKEY, TENANT, TRACEPARENT

SPEC_VERSION = "1.0"
DEFAULT_SOURCE = "overture"
_RESERVED = frozenset({"data", PARTITIONKEY, "key", "envelope"})
"""Names an event contract cannot use for a data field: they are the event's own
(``event.data``, its correlation key, its CloudEvent). Every other CloudEvents attribute
(``id``, ``type``, ``source``, ``subject``, ``time``, ``tenant``, …) lives only on
``event.envelope``, so business data may use those names (an order's ``id``, a payment's
``type``)."""


_NOT_IN_A_TYPE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
"""Whitespace, control characters, surrogates and noncharacters (see :func:`type_problem`)."""
MAX_TYPE_LENGTH = 256


def type_problem(event_type: Any) -> str | None:
    """Why ``event_type`` is not a valid event type, or None if it is.

    The one rule for every path (client, CLI, engine): a CloudEvents ``type`` is a
    non-empty string of allowable Unicode characters (no control characters, surrogates
    or noncharacters); Overture also refuses whitespace, which no reverse-DNS style type
    (``com.example.order.placed``) has and which cannot be typed back at a shell, and
    types longer than :data:`MAX_TYPE_LENGTH` characters.
    """
    if not isinstance(event_type, str):
        return f"event type must be a string, not {type(event_type).__name__}"
    if not event_type:
        return "event type is empty"
    if len(event_type) > MAX_TYPE_LENGTH:
        return f"event type is longer than {MAX_TYPE_LENGTH} characters"
    bad = _NOT_IN_A_TYPE.search(event_type)
    if bad is not None:
        return (
            f"event type {event_type!r} holds {_char_name(bad.group())} at position "
            f"{bad.start()} (a CloudEvents type has no whitespace or control characters)"
        )
    return None


INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""The integers that travel exactly: JSON codecs (orjson here, most others elsewhere) carry
64-bit integers and turn any larger one into a rounded float."""

_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19
"""A run of digits that may be an integer beyond 64 bits (2**63 has 19 digits), searched
in the bytes with every digit mapped to "0": ~0.4 µs per event where the obvious regex
took ~4 µs (this runs on every record the engine decodes)."""


def number_problem(value: Any, where: str = "data") -> str | None:
    """Why ``value`` (event data) would not survive the JSON trip exactly, or None.

    The one rule for every path (client, CLI, raw appends decoded by the engine):
    integers must lie within 64 bits (``-2**63`` to ``2**64 - 1``) and floats must be
    finite; anything else is refused, naming the field, instead of being rounded to a
    float or stored as ``null``. Carry larger numbers as strings.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        digits = str(abs(value))
        shown = digits if len(digits) <= 30 else f"{digits[:12]}...({len(digits)} digits)"
        return (
            f"{where}: the integer {'-' if value < 0 else ''}{shown} is outside 64 bits "
            f"({INT_MIN} to {INT_MAX}) and would not travel exactly; send it as a string"
        )
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{where}: {value} is not a JSON number (NaN and infinities are refused)"
    if isinstance(value, dict):
        for name, item in value.items():
            problem = number_problem(item, f"{where}.{name}")
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = number_problem(item, f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


_text_type_problem = lru_cache(maxsize=4096)(type_problem)
""":func:`type_problem` of a ``str``, remembered: an engine reads the same few types over
and over (a regular-expression search per record was a tenth of decoding one)."""


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X}" + (" (whitespace)" if char.isspace() else "")


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Time-ordered ids give the instances they start time-ordered ids too
    (``core.identity.instance_id_for``), which keeps SQLite's B-tree writes local. Python
    3.14's ``uuid.uuid7`` does the same; this is for 3.11.
    """
    millis = time_ns() // 1_000_000 & 0xFFFFFFFFFFFF
    rand = int.from_bytes(os.urandom(10))
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & 0x3FFFFFFFFFFFFFFF)
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A CloudEvent: attributes plus JSON ``data``."""

    type: str
    data: Any = None
    id: str = field(default_factory=_new_id)
    source: str = DEFAULT_SOURCE
    subject: str | None = None
    time: datetime = field(default_factory=_now)
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    partitionkey: str | None = None
    traceparent: str | None = None
    tenant: str | None = None

    def with_data(self, data: Any) -> Envelope:
        """The same event with other data (faster than ``dataclasses.replace``)."""
        return Envelope(
            self.type,
            data,
            self.id,
            self.source,
            self.subject,
            self.time,
            self.datacontenttype,
            self.dataschema,
            self.partitionkey,
            self.traceparent,
            self.tenant,
        )

    def to_dict(self) -> dict[str, Any]:
        """The CloudEvents JSON (structured mode) form, without unset optional attributes."""
        out: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.isoformat(),
            "datacontenttype": self.datacontenttype,
        }
        for name in ("subject", "dataschema", *EXTENSIONS):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> Envelope:
        """Parse the structured form; raises :class:`MalformedEvent` with the reason."""
        if not isinstance(raw, dict):
            raise MalformedEvent(f"a CloudEvent must be a JSON object, not {type(raw).__name__}")
        missing = [name for name in ("id", "source", "type") if not raw.get(name)]
        if missing:
            raise MalformedEvent(f"CloudEvent lacks required attribute(s): {', '.join(missing)}")
        if raw.get("specversion", SPEC_VERSION) != SPEC_VERSION:
            raise MalformedEvent(f"unsupported CloudEvents specversion {raw['specversion']!r}")
        for name in ("id", "source", "type"):
            if not isinstance(raw[name], str):
                raise MalformedEvent(f"CloudEvent attribute {name!r} must be a string")
        problem = _text_type_problem(raw["type"])
        if problem is not None:
            raise MalformedEvent(problem)
        try:
            time = datetime.fromisoformat(raw["time"]) if raw.get("time") else _now()
        except (TypeError, ValueError) as exc:
            raise MalformedEvent(f"CloudEvent 'time' is not RFC 3339: {raw.get('time')!r}") from exc
        key = raw.get(PARTITIONKEY)
        get = raw.get
        return cls(  # positional, in field order: a third cheaper than keywords (per record)
            raw["type"],
            get("data"),
            raw["id"],
            raw["source"],
            get("subject"),
            time if time.tzinfo else time.replace(tzinfo=UTC),
            get("datacontenttype") or "application/json",
            get("dataschema"),
            None if key is None else str(key),
            get(TRACEPARENT),
            get(TENANT),
        )


def encode(envelope: Envelope) -> bytes:
    """Serialize an envelope to CloudEvents structured JSON bytes."""
    try:
        return orjson.dumps(envelope.to_dict())
    except TypeError as exc:
        raise EventValidationError(f"event {envelope.type!r} data is not JSON: {exc}") from exc


def decode(raw: bytes) -> Envelope:
    """Parse CloudEvents structured JSON bytes; raises :class:`MalformedEvent`, also for
    data that breaks :func:`number_problem`'s rule (orjson would round an integer beyond
    64 bits to a float)."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    check_exact_numbers(raw)
    return Envelope.from_dict(parsed)


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON keeping every integer exact (Python ints) and refusing ``NaN`` and
    ``Infinity``, which are not JSON; check the result with :func:`number_problem`.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``) or a non-finite constant.
    """
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (NaN and infinities are refused)")


def check_exact_numbers(raw: bytes) -> None:
    """Refuse an event whose JSON bytes hold an integer that a JSON parser would round.

    Raises:
        MalformedEvent: naming the field (see :func:`number_problem`).
    """
    if _LONG_RUN not in raw.translate(_DIGITS_AS_ZERO):  # the usual case: no parse at all
        return
    try:
        exact = loads_exact(raw)
    except ValueError:  # orjson accepted it; a difference of dialect is not ours to judge
        return
    data = exact.get("data") if isinstance(exact, dict) else None
    problem = number_problem(data)
    if problem is not None:
        raise MalformedEvent(problem)


class Event(BaseModel):
    """Base of typed event contracts; also the generic event handed to untyped handlers.

    Subclass with ``type=`` (the CloudEvents type) and optionally ``key=`` (the data field
    that gives the correlation key). A plain ``Event`` carries arbitrary ``data``.

    Its CloudEvents attributes are on :attr:`envelope` (``event.envelope.id``, ``.type``,
    ``.source``, ``.subject``, ``.time``, ``.tenant``, …); set them with
    :meth:`with_attributes`. On the event itself are only its data fields, ``data``, and
    the correlation key ``key`` (alias ``partitionkey``), so that data fields named ``id``,
    ``type``, ``source``, ``subject`` or ``time`` mean the data.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    event_type: ClassVar[str | None] = None
    """The CloudEvents type of a typed subclass."""
    key_field: ClassVar[str | None] = None
    """The data field whose value is the default partition/correlation key."""

    # An event's CloudEvent lives in pydantic's per-instance private dict under
    # "_envelope", set by ``_attach`` rather than declared as a PrivateAttr: a declared one
    # made every validation run pydantic's private-attribute setup and every read go
    # through ``__getattr__`` (about 1 µs each, for every event decoded or sent). Copies,
    # pickling and equality still carry it, as they do any private value.

    def __init_subclass__(cls, type: str | None = None, key: str | None = None, **kwargs: Any):
        # ``type=`` and ``key=`` are ours; pydantic sees them again (and ignores them) in
        # __pydantic_init_subclass__, which runs once the fields are known.
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        event_type = kwargs.pop("type", None)
        key = kwargs.pop("key", None)
        super().__pydantic_init_subclass__(**kwargs)
        clash = _RESERVED.intersection(cls.model_fields)
        if clash:
            raise ConfigError(
                f"{cls.__name__}: field name(s) {sorted(clash)} are reserved: an event's "
                "`data`, `key`/`partitionkey` and `envelope` are its own (any other name, "
                "`id` and `type` included, is free for data)"
            )
        if event_type is not None:
            if not isinstance(event_type, str) or not event_type:
                raise ConfigError(f"{cls.__name__}: type= must be a non-empty string")
            cls.event_type = event_type
            # Typed contracts ignore unknown fields so that older consumers tolerate newer
            # producers (additive evolution) instead of rejecting their events.
            cls.model_config["extra"] = "ignore"
            cls.model_rebuild(force=True)
        if key is not None:
            if key not in cls.model_fields:
                raise ConfigError(f"{cls.__name__}: key={key!r} is not one of its fields")
            cls.key_field = key

    # -- construction -------------------------------------------------------------------

    @classmethod
    def of(cls, type: str, data: dict[str, Any] | None = None, *, key: str | None = None) -> Event:
        """A generic (untyped) event of ``type`` with ``data``."""
        event = Event(**(data or {}))
        _attach(event, Envelope(type=type, data=data or {}, partitionkey=key))
        return event

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Self:
        """Validate ``envelope.data`` against this contract.

        Raises:
            EventValidationError: the data does not match the schema.
        """
        data = envelope.data if envelope.data is not None else {}
        if not isinstance(data, dict):
            if cls is Event:  # an untyped event may carry any JSON (CloudEvents allows it)
                event = cls()
                _attach(event, envelope)
                return event
            raise EventValidationError(f"event {envelope.type!r}: data must be a JSON object")
        try:
            event = cls.model_validate(data)
        except _PydanticValidationError as exc:
            raise EventValidationError(_describe(envelope.type, exc)) from exc
        except Exception as exc:  # a contract's own validator tripping over foreign input
            raise EventValidationError(
                f"event {envelope.type!r} violates its schema: {type(exc).__name__}: {exc}"
            ) from exc
        _attach(event, envelope)
        return event

    def with_attributes(self, **attributes: Any) -> Self:
        """A copy with the given CloudEvents attributes replaced (``key=`` sets partitionkey)."""
        if "key" in attributes:
            attributes[PARTITIONKEY] = attributes.pop("key")
        copy = self.model_copy()
        _attach(copy, replace(self.envelope, **attributes))
        return copy

    # -- attributes ---------------------------------------------------------------------

    @property
    def envelope(self) -> Envelope:
        """The full CloudEvent (created on first access for a freshly built event)."""
        private = self.__pydantic_private__
        envelope = None if private is None else private.get("_envelope")
        if envelope is None:
            if self.event_type is None:
                raise ConfigError("a plain Event needs a type: use Event.of(type, data)")
            data = self.model_dump(mode="json")
            value = None if self.key_field is None else data[self.key_field]
            key = None if value is None else str(value)  # a None field is no key, not "None"
            envelope = Envelope(type=self.event_type, data=data, partitionkey=key)
            _attach(self, envelope)
        return envelope

    @property
    def data(self) -> Any:
        """The event's data, as it travels (a JSON value)."""
        return self.envelope.data

    @property
    def partitionkey(self) -> str | None:
        return self.envelope.partitionkey

    @property
    def key(self) -> str | None:
        """Alias of ``partitionkey``: the event's correlation key."""
        return self.envelope.partitionkey


def _attach(event: Event, envelope: Envelope) -> None:
    """Give ``event`` its CloudEvent (see the note in :class:`Event`)."""
    private = event.__pydantic_private__
    if private is None:
        object.__setattr__(event, "__pydantic_private__", {"_envelope": envelope})
    else:
        private["_envelope"] = envelope


def _describe(event_type: str, exc: _PydanticValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<data>'}: {err['msg']}" for err in exc.errors()
    )
    return f"event {event_type!r} violates its schema: {problems}"
