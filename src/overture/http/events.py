"""``POST /events``: CloudEvents in (binary, structured or batch mode), checked as
:meth:`Client.send` checks them, group-committed, answered once durable."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import protocol
from ..codec import Codec
from ..errors import ConfigError, EventValidationError, MalformedEvent, UnknownEventType
from ..events import Envelope
from ..observe import tracehooks
from . import binding
from .models import Accepted, Problem
from .problems import ApiError, from_overture
from .state import ApiState

_BODY = {
    "description": "One event in binary mode (ce-* headers, the body is its JSON data), "
    f"one in structured mode ({binding.STRUCTURED}) or several ({binding.BATCH}, "
    "committed all or none).",
    "required": False,
    "content": {
        "application/json": {"schema": {"description": "binary mode: the event's data"}},
        binding.STRUCTURED: {"schema": {"type": "object", "description": "a CloudEvent"}},
        binding.BATCH: {"schema": {"type": "array", "items": {"type": "object"}}},
    },
}
_PARAMETERS = [
    {
        "name": "start",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Answer with the ids of the instances the event starts (one event "
        "only; 422 if it starts none).",
    },
    {
        "name": "process",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "With start=true: only this process's instance.",
    },
]
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text}
    for status, text in {
        400: "not UTF-8, not JSON, a required attribute missing, a wrong specversion",
        403: "a reserved (overture.*) event type",
        413: "the body is larger than the limit",
        415: "data that is not JSON",
        422: "data that violates the type's contract (the message names the field), or an "
        "attribute Overture does not carry",
    }.items()
}


def router(state: ApiState) -> APIRouter:
    """The events routes of an API."""
    routes = APIRouter(tags=["events"])
    codec = state.client.sync.codec

    @routes.post(
        "/events",
        status_code=202,
        response_model=Accepted,
        responses=_ERRORS,
        openapi_extra={"requestBody": _BODY, "parameters": _PARAMETERS},
        summary="Send events",
    )
    async def post_events(request: Request) -> JSONResponse:
        """Accept CloudEvents: 202 with their ids once they are committed. A repeated
        event id is accepted again and appended once."""
        # The query is read here, not by FastAPI's parameter injection: that was a fifth
        # of the server's time per single-event request (documented in _PARAMETERS).
        start, process = _query(request)
        body = await binding.read_body(request, state.max_body)
        content_type = request.headers.get("content-type")
        if binding.media_type(content_type) in (binding.STRUCTURED, binding.BATCH):
            mode, items = binding.structured_events(content_type, body)
        else:
            mode, items = "binary", [binding.binary_event(request.headers, body)]
        if start and len(items) != 1:
            raise ApiError(400, f"start=true takes exactly one event, not {len(items)}")
        if not start and process is not None:
            raise ApiError(400, "process= is only for start=true", field="process")
        envelopes = []
        seen: set[str] = set()
        for n, item in enumerate(items):
            what = "the event" if mode != "batch" else f"event {n} of the batch"
            envelope = _envelope(codec, state, item, what)
            if envelope.id in seen:
                raise ApiError(400, f"{what}: id {envelope.id!r} is already in this batch")
            seen.add(envelope.id)
            envelopes.append(envelope)
        # the request's own W3C trace context (its traceparent header) is the parent of
        # the events' send spans when tracing is on
        with tracehooks.incoming(request.headers.get(protocol.TRACEPARENT)):
            if start:
                return await _start(state, envelopes[0], process)
            ids = await state.client.send_many(envelopes)
        return JSONResponse({"ids": ids}, status_code=202)

    return routes


def _query(request: Request) -> tuple[bool, str | None]:
    """``start`` and ``process`` of the query string.

    Raises:
        ApiError: 400, an unknown parameter or a ``start`` that is not a boolean.
    """
    query = request.query_params
    unknown = sorted(set(query) - {"start", "process"})
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}")
    raw = query.get("start", "false").lower()
    if raw not in _BOOLEANS:
        raise ApiError(400, f"start: {raw!r} is not a boolean (true or false)", field="start")
    return _BOOLEANS[raw], query.get("process")


def _envelope(codec: Codec, state: ApiState, item: dict[str, Any], what: str) -> Envelope:
    """The checked envelope of a structured form, or the answer refusing it."""
    if protocol.is_reserved(item["type"]):
        raise ApiError(
            403,
            f"{what}: type {item['type']!r} is reserved for control events (the "
            f"{protocol.RESERVED_PREFIX!r} namespace); the API's routes send those "
            "(cancel, dead-letter replay)",
            field="type",
        )
    if item.get(protocol.PARTITIONKEY) is None:  # as `overture send` does: the contract's key
        item = _keyed(state, item)
    try:
        envelope = codec.from_dict(item)
        codec.check(envelope)
        codec.validate(envelope)
    except (MalformedEvent, EventValidationError, UnknownEventType) as error:
        problem = from_overture(error)
        raise ApiError(
            problem.status, f"{what} (id {item.get('id')!r}): {problem.message}", **problem.extra
        ) from None
    return envelope


def _keyed(state: ApiState, item: dict[str, Any]) -> dict[str, Any]:
    """The structured form with the key its type's contract names in its data, if any."""
    cls = state.app.event_class(item["type"])
    data = item.get("data")
    if cls is None or cls.key_field is None or not isinstance(data, dict):
        return item
    value = data.get(cls.key_field)
    if value is None:
        return item
    return {**item, protocol.PARTITIONKEY: str(value)}


async def _start(state: ApiState, envelope: Envelope, process: str | None) -> JSONResponse:
    attributes = {
        name: getattr(envelope, name)
        for name in ("id", "source", "subject", "time", "datacontenttype", "dataschema")
    }
    for name in (protocol.TRACEPARENT, protocol.TENANT):
        if getattr(envelope, name) is not None:
            attributes[name] = getattr(envelope, name)
    try:
        handle = await state.client.start(
            envelope.type, envelope.data, process=process, key=envelope.partitionkey, **attributes
        )
    except ConfigError as error:  # it starts nothing (or not that process): nothing sent
        raise ApiError(422, str(error), field="type" if process is None else "process") from None
    return JSONResponse(
        {"ids": [handle.event_id], "instances": list(handle.instance_ids)}, status_code=202
    )
