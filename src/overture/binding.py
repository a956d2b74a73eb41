"""The CloudEvents Kafka protocol binding: an event's structured JSON form to a Kafka
record (key, headers, value), and a record, whichever client wrote it, back.

Inside Overture an event is its structured JSON form (``events.encode``), so the engine
reads the same bytes on every backend. Overture writes **binary content mode**: the
attributes are ``ce_<name>`` headers, ``datacontenttype`` is the ``content-type`` header,
the value is the JSON ``data`` and the record key is the ``partitionkey`` (also sent as
a ``ce_partitionkey`` header, so that a consumer that re-keys the record can still tell
the key). Reading, the mode is the binding's:

- a ``content-type`` header starting with ``application/cloudevents`` is **structured
  mode**: the value is the whole event in a CloudEvents event format (Overture reads
  ``application/cloudevents+json``); ``ce_`` headers the record may carry as well are
  ignored, as the CloudEvents SDKs ignore them;
- otherwise a ``ce_specversion`` header is **binary mode**;
- a record with neither is read like structured mode (a CloudEvent in JSON from a tool
  that sets no headers); a ``content-type`` it has is the data's, where the 1.x SDK's
  ``to_structured`` puts ``datacontenttype``.

**Payload-coded events** (``overture.codec.PayloadCodec``: their structured form has a
``payloadcodec`` attribute and ``data_base64`` instead of ``data``) go out with the codec's
bytes as the value and a ``ce_payloadcodec`` header; reading such a binary-mode record,
the value is taken as those bytes (not checked as JSON) and comes back as ``data_base64``,
so the structured form is the one written, byte for byte.

**Keys are bytes.** An event's partition key is its ``partitionkey`` attribute
(``ce_partitionkey`` in binary mode), else the record key when that is text: UTF-8 and a
valid CloudEvents String (no control characters). A key that is not (say the 8 bytes of
Java's ``LongSerializer``) leaves the event *keyless*: it is read and routed like any
keyless event, on the partition it was written to, and the key's bytes stay with the
record (:class:`~overture.ports.Wire`, and a dead letter).

A record that is no event Overture can read (a ``ce_`` or ``content-type`` header that is
not UTF-8, a binary-mode value that is not JSON, a missing required header, an event
format other than JSON) gets a :attr:`Read.error` naming the header or the position in
the value; the engine dead-letters it with the record's bytes as they arrived.

This module is pure (no Kafka client): the Kafka backend uses it to produce and consume,
and the engine to read a dead letter kept as it arrived when it is replayed.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from .errors import MalformedEvent
from .events import check_exact_numbers
from .ports import Headers
from .protocol import EXTENSIONS, PARTITIONKEY, PAYLOADCODEC, TENANT, TRACEPARENT

_ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
    TRACEPARENT,
    TENANT,
    PAYLOADCODEC,
)

_ORDER = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "subject",
    "dataschema",
    *EXTENSIONS,
)

_HEADER_ATTRIBUTES = {f"ce_{name}": name for name in _ORDER}
"""The headers of the attributes Overture knows, as producers write them (lower case):
found without lowering and slicing every name of every record."""

STRUCTURED_PREFIX = "application/cloudevents"
STRUCTURED_JSON = "application/cloudevents+json"


class Read(NamedTuple):
    """A record read through the binding."""

    value: bytes
    """The event in structured JSON form (for an ``error``: the record's value)."""
    key: str | None
    """The event's partition key as text; ``None``: keyless (or a key that is not UTF-8)."""
    error: str | None = None
    """Why the record is no event Overture can read, in terms of its key, headers, value."""


def to_binary(structured: bytes) -> tuple[str | None, list[tuple[str, bytes]] | None, bytes]:
    """(record key, headers, value) of an event in structured JSON form. Bytes that are
    not a CloudEvent object go out unchanged and without headers, as do events whose data
    parsing would round (an integer beyond 64 bits) and events whose ``id``, ``source``
    or ``type`` is not a string: the engine dead-letters those."""
    try:
        check_exact_numbers(structured)
        event = orjson.loads(structured)
    except (orjson.JSONDecodeError, MalformedEvent):
        return None, None, structured
    if not isinstance(event, dict) or "type" not in event or "id" not in event:
        return None, None, structured
    if any(not isinstance(event.get(name, ""), str) for name in ("id", "source", "type")):
        # CloudEvents Strings: as a header ``5`` would read back as the id "5" and run,
        # where the same bytes on SQLite are dead-lettered; kept as they are, the engine
        # dead-letters them here too, with the same reason
        return None, None, structured
    headers: list[tuple[str, bytes]] = []
    for name in _ATTRIBUTES:
        value = event.get(name)
        if value is not None:
            headers.append((f"ce_{name}", str(value).encode()))
    key = event.get(PARTITIONKEY)
    if key is not None:
        key = str(key)
        headers.append((f"ce_{PARTITIONKEY}", key.encode()))
    headers.append(
        ("content-type", str(event.get("datacontenttype") or "application/json").encode())
    )
    encoded = event.get("data_base64")
    if isinstance(encoded, str):  # a payload codec's output: the value is its bytes
        try:
            return key, headers, base64.b64decode(encoded, validate=True)
        except ValueError:
            return None, None, structured  # not base64: left for the engine to dead-letter
    return key, headers, orjson.dumps(event.get("data"))


def from_record(key: bytes | None, headers: Headers | None, value: bytes | None) -> Read:
    """Read a record in either content mode (see the module docstring). Never raises:
    what cannot be read is reported in :attr:`Read.error`."""
    text_key = _text(key)
    attributes: dict[str, str] = {}
    content_type: str | None = None
    for name, raw in headers or ():
        if raw is None:
            continue  # a null header carries no attribute
        attribute = _HEADER_ATTRIBUTES.get(name)
        if attribute is None:  # another extension, a header in capitals, content-type
            lowered = name.lower()
            if lowered.startswith("ce_"):
                attribute = lowered[3:]
            elif lowered != "content-type":
                continue  # not ours
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            return Read(value or b"", text_key, f"header {name!r} {_not_utf8(exc)}")
        if attribute is None:
            content_type = text
        else:
            attributes[attribute] = text
    if content_type is not None and content_type.strip().lower().startswith(STRUCTURED_PREFIX):
        media = content_type.split(";")[0].strip().lower()
        if media != STRUCTURED_JSON:
            return Read(
                value or b"",
                text_key,
                f"structured-mode event format {media!r} is not supported "
                f"(content-type {content_type!r}; Overture reads {STRUCTURED_JSON})",
            )
        return _structured(text_key, value)
    if "specversion" not in attributes:
        # No CloudEvents headers: a content-type is the data's, as the 1.x SDK's
        # to_structured writes it (and its from_structured reads it back)
        return _structured(text_key, value, content_type)
    return _binary(text_key, attributes, content_type, value)


def _structured(key: str | None, value: bytes | None, content_type: str | None = None) -> Read:
    """The value is the event; the record key is its partition key unless it has one
    (and ``content_type`` its ``datacontenttype``)."""
    if value is None:
        return Read(b"", key, "the record has no value (a tombstone), so it holds no event")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Read(value, key)  # decoding it reports where the value breaks
    if not isinstance(event, dict) or not event:
        return Read(value, key)
    added: dict[str, str] = {}
    if PARTITIONKEY in event:
        own = event[PARTITIONKEY]
        key = None if own is None else str(own)
    elif key is not None:
        added[PARTITIONKEY] = key
    if content_type is not None and "datacontenttype" not in event:
        added["datacontenttype"] = content_type
    if not added:
        return Read(value, key)
    # Spliced in before the first member, not re-serialized: the rest keeps its bytes
    # (numbers included) exactly as the producer wrote them.
    body = value.lstrip()[1:]
    return Read(orjson.dumps(added)[:-1] + b"," + body, key)


def _binary(
    key: str | None, attributes: dict[str, str], content_type: str | None, value: bytes | None
) -> Read:
    raw = value or b""
    if not (attributes.get("id") and attributes.get("source") and attributes.get("type")):
        missing = [f"ce_{name}" for name in ("id", "source", "type") if not attributes.get(name)]
        return Read(raw, key, f"binary-mode record lacks header(s) {', '.join(missing)}")
    when = attributes.get("time")
    if when is not None:
        try:
            datetime.fromisoformat(when)
        except ValueError:
            return Read(raw, key, f"header 'ce_time' is not an RFC 3339 time: {when!r}")
    coded = PAYLOADCODEC in attributes  # the value is a payload codec's bytes, not JSON
    if raw and not coded:
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Read(
                raw,
                key,
                f"the value is not JSON (content-type {content_type or 'unset'!r}; Overture "
                f"reads JSON data): {exc}",
            )
    if PARTITIONKEY not in attributes and key is not None:
        # the binding maps partitionkey to the record key
        attributes[PARTITIONKEY] = key
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    # the order ``events.encode`` writes, so an event we sent comes back byte for byte
    ordered = {name: attributes[name] for name in _ORDER if name in attributes}
    if len(ordered) < len(attributes):
        ordered.update(attributes)  # unknown extensions last (the others keep their place)
    head = orjson.dumps(ordered)
    if coded:
        structured = head[:-1] + b',"data_base64":"' + base64.b64encode(raw) + b'"}'
        return Read(structured, ordered.get(PARTITIONKEY))
    # The data is spliced in as it arrived: checked JSON, never re-serialized.
    structured = head[:-1] + b',"data":' + (raw if raw else b"null") + b"}"
    return Read(structured, ordered.get(PARTITIONKEY))


_NOT_IN_STRINGS = re.compile(r"[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")
"""Characters a CloudEvents String must not hold: control characters and (in the Basic
Multilingual Plane) noncharacters."""


def _text(key: bytes | None) -> str | None:
    """A record key as the event's partition key, or ``None`` for an opaque key: one that
    is not UTF-8, or whose text is no CloudEvents String (the 8 bytes of a Java ``Long``
    below 2**56 are UTF-8, but start with NUL)."""
    if key is None:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return None if _NOT_IN_STRINGS.search(text) else text


def _not_utf8(exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start]
    return f"is not UTF-8 (byte 0x{byte:02x} at position {exc.start})"


def dump_headers(headers: Headers) -> str:
    """Headers as JSON text, ``[[name, base64 value or null], ...]`` (values are bytes)."""
    return orjson.dumps(
        [
            [name, None if value is None else base64.b64encode(value).decode()]
            for name, value in headers
        ]
    ).decode()


def load_headers(text: str | bytes) -> Headers:
    """The inverse of :func:`dump_headers`."""
    return tuple(
        (name, None if value is None else base64.b64decode(value))
        for name, value in orjson.loads(text)
    )


def headers_of(raw: Any) -> Headers:
    """A Kafka client's headers as :data:`Headers`: confluent-kafka's ``headers()`` is a
    list of ``(str, bytes | None)`` tuples, or ``None``."""
    return tuple(raw) if raw else ()
