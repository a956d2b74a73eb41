"""The JSON bodies the API answers with, as pydantic models: they are the schemas of
``/openapi.json``. Handlers on hot paths build the same shapes as plain dicts (answered
with ``JSONResponse``, skipping a second validation); the models document them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..protocol import queue_problem


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


class DeleteRequest(BaseModel):
    """``POST /dead-letters/delete``: some letters by id, or every one; all or none."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = None
    all: bool = False
    reason: str | None = None


class Deleted(BaseModel):
    """The dead letters deleted (200), or whose deletion their engines were asked for
    (202, Kafka: ``requests`` names the ``overture.dlq.delete`` events)."""

    deleted: list[str]
    requests: list[str]


class Replayed(BaseModel):
    """The replay requests sent: (dead letter id, request event id) pairs."""

    requested: list[dict[str, str]]


class Health(BaseModel):
    status: str
    reason: str | None = None


# -- the task endpoints (docs/protocol.md, "Over HTTP") ---------------------------------

MAX_CLAIM = 100
"""The most attempts one claim hands out."""
MAX_LEASE = 3600.0
"""The longest lease, in seconds."""
MAX_CLAIM_WAIT = 30.0
"""The longest long poll of a claim, in seconds."""
MAX_WORKER = 200
"""The longest worker name."""


class _Body(BaseModel):
    # strict: "10" is not a count and 1 is not a boolean; unknown members are refused
    # (a misspelt "lease" must not silently become the default)
    model_config = ConfigDict(strict=True, extra="forbid")


Worker = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_WORKER,
        description="A name you choose, unique per worker process (`billing-7f3a`).",
    ),
]


def _seconds(value: Any) -> Any:
    # strict floats refuse integers, but a number of seconds may be either (not a bool)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(allow_inf_nan=False)]


class ClaimBody(_Body):
    """``POST /tasks/claim``."""

    worker: Worker
    queues: list[str] = Field(min_length=1, max_length=100, description="The queues served.")
    max: int = Field(1, ge=1, le=MAX_CLAIM, description="The most attempts to hand out.")
    lease: Seconds = Field(30.0, ge=1, le=MAX_LEASE, description="Seconds each lease lasts.")
    wait: Seconds = Field(
        0.0, ge=0, le=MAX_CLAIM_WAIT, description="Seconds to wait for attempts (long poll)."
    )

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, queues: list[str]) -> list[str]:
        for queue in queues:
            problem = queue_problem(queue)
            if problem is not None:
                raise ValueError(problem)
        return queues


class HeartbeatBody(_Body):
    """``POST /tasks/{id}/heartbeat``."""

    worker: Worker
    lease: Seconds = Field(30.0, ge=1, le=MAX_LEASE, description="Seconds from now.")


class CompleteBody(_Body):
    """``POST /tasks/{id}/complete``."""

    worker: Worker
    output: Any = Field(None, description="The task's result (any JSON; null if left out).")


class TaskErrorBody(_Body):
    type: str = Field(min_length=1, description="The kind of error (`CardDeclined`).")
    message: str = Field(description="What happened, for people.")


class FailBody(_Body):
    """``POST /tasks/{id}/fail``."""

    worker: Worker
    error: TaskErrorBody
    retryable: bool = Field(
        True, description="false ends the call at once; else its retry policy decides."
    )


class ClaimedTaskOut(BaseModel):
    id: str = Field(description="The attempt id (the request event's id).")
    queue: str
    lease_until: float = Field(description="Unix seconds: renew it before then.")
    request: dict[str, Any] = Field(description="The request CloudEvent (structured JSON).")


class Claimed(BaseModel):
    """``POST /tasks/claim``: the attempts handed out (possibly none)."""

    tasks: list[ClaimedTaskOut]


class Lease(BaseModel):
    """``POST /tasks/{id}/heartbeat``."""

    lease_until: float = Field(description="Unix seconds.")


class Finished(BaseModel):
    """``POST /tasks/{id}/complete`` and ``/fail``: the result is on the log."""

    status: str = Field(description='"accepted"')
