"""The CloudEvents Kafka protocol binding, binary content mode.

On the wire each event is one record: the attributes are ``ce_<name>`` headers, the record
key is the ``partitionkey``, the value is the JSON ``data`` and ``content-type`` carries
``datacontenttype``. Inside Overture an event is the structured JSON form (``events.encode``);
these two functions translate, so the engine sees the same bytes on every backend.

A record without a ``ce_specversion`` header is taken as structured mode (or as garbage:
the engine dead-letters what does not decode, keeping the bytes).
"""

from __future__ import annotations

from typing import Any

import orjson

from ...errors import MalformedEvent
from ...events import check_exact_numbers

Headers = list[tuple[str, str | bytes | None]]

_ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
    "traceparent",
    "tenant",
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
    "partitionkey",
    "traceparent",
    "tenant",
)


def to_binary(structured: bytes) -> tuple[str | None, Headers | None, bytes]:
    """(record key, headers, value) of an event in structured JSON form. Bytes that are
    not a CloudEvent object go out unchanged and without headers, as do events whose data
    parsing would round (an integer beyond 64 bits): the engine dead-letters those."""
    try:
        check_exact_numbers(structured)
        event = orjson.loads(structured)
    except (orjson.JSONDecodeError, MalformedEvent):
        return None, None, structured
    if not isinstance(event, dict) or "type" not in event or "id" not in event:
        return None, None, structured
    headers: Headers = []
    for name in _ATTRIBUTES:
        value = event.get(name)
        if value is not None:
            headers.append((f"ce_{name}", str(value).encode()))
    key = event.get("partitionkey")
    if key is not None:
        key = str(key)
        # also as a header: a consumer that re-keys the record can still tell the key
        headers.append(("ce_partitionkey", key.encode()))
    headers.append(
        ("content-type", str(event.get("datacontenttype") or "application/json").encode())
    )
    return key, headers, orjson.dumps(event.get("data"))


def from_binary(key: bytes | None, headers: Any, value: bytes | None) -> bytes:
    """The structured JSON form of a record (binary or structured mode)."""
    attributes: dict[str, str] = {}
    content_type = None
    for name, raw in headers or ():
        if not isinstance(raw, bytes):
            continue
        if name.startswith("ce_"):
            attributes[name[3:]] = raw.decode("utf-8", "replace")
        elif name.lower() == "content-type":
            content_type = raw.decode("utf-8", "replace")
    if "specversion" not in attributes:
        return value or b""
    if "partitionkey" not in attributes and key is not None:
        # the binding maps partitionkey to the record key
        attributes["partitionkey"] = key.decode("utf-8", "replace")
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    # the order ``events.encode`` writes, so an event we sent comes back byte for byte
    ordered = {name: attributes.pop(name) for name in _ORDER if name in attributes}
    ordered.update(attributes)  # unknown extensions last
    attributes = ordered
    # Splice the data in unparsed: valid JSON data gives a valid event without a second
    # parse; anything else gives bytes that fail to decode, and the engine dead-letters them.
    head = orjson.dumps(attributes)
    return head[:-1] + b',"data":' + (value if value else b"null") + b"}"
