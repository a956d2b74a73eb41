"""The CloudEvents HTTP binding, as ``POST /events`` reads it: a request's headers and
body to the structured form of each event it carries, or an :class:`ApiError`.

Three content modes (CloudEvents HTTP protocol binding 1.0):

- **binary**: the attributes are ``ce-*`` headers (values percent-decoded), the body is
  the event's data, ``Content-Type`` its ``datacontenttype``;
- **structured**: ``Content-Type: application/cloudevents+json``, the body one event in
  JSON;
- **batch**: ``Content-Type: application/cloudevents-batch+json``, the body a JSON array
  of events.

Overture's event data is JSON: a body or ``datacontenttype`` of another media type, and
``data_base64``, are refused (415). An attribute Overture does not carry (an extension
other than ``partitionkey``, ``traceparent``, ``tenant``) is refused (422) rather than
dropped: the event would otherwise be stored without something its producer sent.
The body is read in chunks and refused (413) as soon as it passes the limit, so an
oversized body is never held whole.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson
from starlette.requests import Request

from .. import events
from ..errors import MalformedEvent
from ..protocol import PARTITIONKEY, TENANT, TRACEPARENT
from .problems import ApiError

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"

REQUIRED = ("specversion", "id", "source", "type")
"""The attributes every event must have."""
OPTIONAL = ("subject", "time", "dataschema", PARTITIONKEY, TRACEPARENT, TENANT)
"""The other attributes Overture carries (all strings)."""
_STRUCTURED_MEMBERS = frozenset({*REQUIRED, *OPTIONAL, "datacontenttype", "data"})
_HEADERS = {f"ce-{name}": name for name in (*REQUIRED, *OPTIONAL)}


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    """Whether a media type is JSON (``application/json``, ``text/json``, ``…+json``)."""
    return media in ("application/json", "text/json") or media.endswith("+json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) once it passes ``limit`` bytes: at once when its
    ``Content-Length`` says so, else while it arrives (a chunked body has none).

    Raises:
        ApiError: 413, or 400 for a ``Content-Length`` that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the limit of {limit} bytes", limit=limit)


def parse_json(body: bytes, what: str) -> Any:
    """The JSON value of a body: UTF-8, valid JSON, integers that travel exactly.

    Raises:
        ApiError: 400 saying which of these it is not.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"{what} is not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"{what} is not valid JSON: {error}") from None
    try:
        events.check_exact_numbers(body)
    except MalformedEvent as error:
        raise ApiError(400, f"{what}: {error}") from None
    return value


def structured_events(content_type: str | None, body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The events of a structured or batch request: (mode, their structured forms).

    Raises:
        ApiError: 400 (not JSON, not an object or array, attributes missing or of the
            wrong type), 415 (data not JSON), 422 (an attribute Overture does not carry).
    """
    media = media_type(content_type)
    if media == BATCH:
        value = parse_json(body, "the batch")
        if not isinstance(value, list):
            raise ApiError(400, f"a {BATCH} body must be a JSON array of events")
        return "batch", [_checked(item, f"event {n} of the batch") for n, item in enumerate(value)]
    value = parse_json(body, "the event")
    return "structured", [_checked(value, "the event")]


def binary_event(headers: Any, body: bytes) -> dict[str, Any]:
    """The structured form of a binary-mode request (``ce-*`` headers, the body as data).

    Raises:
        ApiError: as :func:`structured_events`; header names in the messages.
    """
    out: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if not lower.startswith("ce-"):
            continue
        attribute = _HEADERS.get(lower)
        if attribute is None:
            if lower == "ce-datacontenttype":
                raise ApiError(
                    400,
                    "in binary mode the data's media type is the Content-Type header, "
                    "not ce-datacontenttype",
                )
            raise ApiError(
                422,
                f"header {lower!r}: Overture does not carry the CloudEvents attribute "
                f"{lower[3:]!r} (its extensions: {PARTITIONKEY}, {TRACEPARENT}, {TENANT})",
                field=lower,
            )
        try:
            # strict: the default would store U+FFFD in place of bytes that are no UTF-8
            out[attribute] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise ApiError(
                400,
                f"header {lower!r}: its percent-encoded bytes are not UTF-8 (CloudEvents "
                "percent-encodes UTF-8)",
                field=lower,
            ) from None
    missing = [f"ce-{name}" for name in REQUIRED if not out.get(name)]
    if missing:
        raise ApiError(
            400,
            f"binary-mode CloudEvent lacks required header(s): {', '.join(missing)} (or send "
            f"Content-Type: {STRUCTURED} with the event as JSON)",
            fields=missing,
        )
    _specversion(out["specversion"], "header 'ce-specversion'")
    media = media_type(headers.get("content-type"))
    if body:
        if media and not is_json(media):
            raise ApiError(415, _not_json(media, "Content-Type"))
        out["data"] = parse_json(body, "the event's data (the body)")
    if media:
        out["datacontenttype"] = headers.get("content-type").strip()
    return out


def _checked(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object (a CloudEvent)")
    if "data_base64" in value:
        raise ApiError(
            415, f"{what}: binary data (data_base64) is refused: Overture event data is JSON"
        )
    unknown = sorted(set(value) - _STRUCTURED_MEMBERS)
    if unknown:
        raise ApiError(
            422,
            f"{what}: Overture does not carry the CloudEvents attribute(s) "
            f"{', '.join(map(repr, unknown))} (its extensions: {PARTITIONKEY}, {TRACEPARENT}, "
            f"{TENANT})",
            fields=unknown,
        )
    missing = [name for name in REQUIRED if value.get(name) in (None, "")]
    if missing:
        raise ApiError(
            400, f"{what} lacks required attribute(s): {', '.join(missing)}", fields=missing
        )
    for name in (*REQUIRED, *OPTIONAL, "datacontenttype"):
        if name in value and value[name] is not None and not isinstance(value[name], str):
            raise ApiError(400, f"{what}: attribute {name!r} must be a string", field=name)
    _specversion(value["specversion"], f"{what}: 'specversion'")
    media = media_type(value.get("datacontenttype"))
    if media and not is_json(media):
        raise ApiError(415, f"{what}: " + _not_json(media, "datacontenttype"))
    return value


def _specversion(value: str, what: str) -> None:
    if value != events.SPEC_VERSION:
        raise ApiError(
            400,
            f"{what} is {value!r}: only CloudEvents {events.SPEC_VERSION} is supported",
            field="specversion",
        )


def _not_json(media: str, where: str) -> str:
    return f"{where} {media!r} is not JSON: Overture event data is JSON (application/json)"


__all__ = ["BATCH", "STRUCTURED", "binary_event", "read_body", "structured_events"]
