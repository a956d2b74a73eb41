"""The JSON bodies the API answers with, as pydantic models: they are the schemas of
``/openapi.json``. Handlers on hot paths build the same shapes as plain dicts (answered
with ``JSONResponse``, skipping a second validation); the models document them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """Every error: a 4xx (503 when the backend cannot be used) and this body."""

    error: str = Field(description="What is wrong, and where it helps what to do.")
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})


class Accepted(BaseModel):
    """``POST /events``: the events are durable (committed) and will be processed."""

    ids: list[str] = Field(description="The event ids, in the request's order.")
    instances: list[str] | None = Field(
        None, description="With ``start=true``: the ids of the instances the event starts."
    )


class InstanceOut(BaseModel):
    """A process instance."""

    id: str
    process: str
    version: int
    key: str | None
    status: str = Field(description="running, waiting, completed, failed, cancelled or stuck")
    created: str = Field(description="RFC 3339")
    updated: str = Field(description="RFC 3339")
    trigger_id: str = Field(description="The id of the event that started it.")
    result: Any = None
    error: Any = None


class InstancePage(BaseModel):
    """One page of ``GET /instances``, oldest first."""

    instances: list[InstanceOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


class TimelineEntry(BaseModel):
    """One journal entry."""

    time: str | None = Field(description="RFC 3339, null for entries without a time")
    kind: str = Field(description="start, cmd, res, cancel, retry or end (see docs/http.md)")
    text: str = Field(description="The entry in words, as ``overture show`` prints it.")
    entry: dict[str, Any] = Field(description="The journal entry itself.")


class InstanceDetail(BaseModel):
    """``GET /instances/{id}``."""

    instance: InstanceOut
    timeline: list[TimelineEntry]


class Outcome(BaseModel):
    """``GET /instances/{id}/result``: 200 once finished, 202 while still going."""

    id: str
    status: str
    finished: bool
    result: Any = None
    error: Any = None


class CancelRequested(BaseModel):
    """``POST /instances/{id}/cancel``: the engine cancels it when it reads the request."""

    id: str = Field(description="The instance's full id.")
    request: str = Field(description="The id of the cancel request event.")


class DeadLetterOut(BaseModel):
    """A dead letter, as ``overture dlq list --json`` prints it: bytes fields are text
    when UTF-8, else base64, as their ``…_encoding`` member says."""

    id: str
    created: str
    source: str
    reason: str
    attempts: int
    event_type: str | None
    key: str | None
    partition: int | None
    offset: int | None
    value: str | None
    value_encoding: str | None = Field(description='"utf-8" or "base64"')
    record_key: str | None
    record_key_encoding: str | None
    headers: list[dict[str, Any]] | None


class DeadLetters(BaseModel):
    dead_letters: list[DeadLetterOut]


class ReplayRequest(BaseModel):
    """``POST /dead-letters/replay``: some letters by id, or every one."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = None
    all: bool = False


class Replayed(BaseModel):
    """The replay requests sent: (dead letter id, request event id) pairs."""

    requested: list[dict[str, str]]


class Health(BaseModel):
    status: str
    reason: str | None = None
