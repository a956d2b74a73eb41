"""Remote tasks: their definitions (``@app.task``) and the messages of one attempt.

A *task* is work a process hands to a worker instead of running it in the engine: a
Python function run by ``overture worker`` (or by ``overture run`` in-process), a worker
in another language (HTTP or Kafka), or a URL the engine's worker POSTs to (a push task).
The engine owns its retries and timeouts; a worker runs one attempt at a time and answers
it with a result built here, so every worker (Python, the HTTP API on behalf of an HTTP
worker, the push dispatcher) writes the same bytes. ``docs/protocol.md`` describes the
messages for other languages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import protocol
from .codec import Codec
from .core.values import to_json
from .errors import EventValidationError, MalformedEvent
from .events import Envelope, number_problem
from .policies import Retry
from .ports import NewRecord

__all__ = [
    "TaskDef",
    "completed",
    "failed",
    "invalid_request",
    "parse_request",
]


@dataclass(frozen=True, slots=True)
class TaskDef:
    """A task registered with ``@app.task``.

    Attributes:
        name: the task's name (``ctx.call(name, ...)``), e.g. ``"shipping.create"``.
        fn: ``def`` or ``async def (input) -> output`` run by a Python worker; None for a
            push task (``url``) or one declared only for its options.
        queue: the queue its attempts are published to (workers serve queues).
        retry: the retry policy of a call that names none.
        timeout: seconds an attempt may take before the engine gives it up (None: no
            deadline).
        url: the endpoint of a push task: the engine's worker POSTs each attempt to it.
        secret_env: the environment variable holding the push task's Standard Webhooks
            signing secret (``whsec_...``).
    """

    name: str
    fn: Callable[[Any], Any] | None
    queue: str
    retry: Retry
    timeout: float | None
    url: str | None = None
    secret_env: str | None = None


def parse_request(codec: Codec, raw: bytes) -> tuple[Envelope, protocol.TaskRequest]:
    """The envelope and message of a published attempt (a ``TaskQueue`` entry).

    Raises:
        MalformedEvent: not a CloudEvent, or not an ``overture.task.requested`` one.
        EventValidationError: its data does not match :class:`protocol.TaskRequest`.
    """
    envelope = codec.from_bytes(raw)
    if envelope.type != protocol.TASK_REQUESTED:
        raise MalformedEvent(
            f"a task queue entry must be a {protocol.TASK_REQUESTED!r} event, not {envelope.type!r}"
        )
    message = protocol.parse_control(envelope.type, envelope.data)
    assert isinstance(message, protocol.TaskRequest)
    return envelope, message


def _result(
    codec: Codec, request: Envelope, message: protocol.TaskRequest, kind: str, data: dict[str, Any]
) -> NewRecord:
    envelope = Envelope(
        type=kind,
        data=data,
        id=protocol.task_result_id(request.id),
        source=request.source,
        subject=message.task,
        partitionkey=message.reply.partitionkey,
        traceparent=request.traceparent,
        tenant=request.tenant,
    )
    return NewRecord(
        message.reply.partitionkey,
        codec.to_bytes(envelope),
        envelope.id,
        kind,
        partition=message.reply.partition,
    )


def completed(
    codec: Codec, request: Envelope, message: protocol.TaskRequest, output: Any
) -> NewRecord:
    """The ``overture.task.completed`` record answering an attempt with ``output`` (JSON).

    Models, dataclasses and datetimes are converted, as a step's result is; numbers JSON
    would not carry exactly are refused, as in ``ctx.call``'s input (orjson would write
    NaN as ``null``).

    Raises:
        EventValidationError: ``output`` is not JSON (nothing is built).
    """
    try:
        output = to_json(output)
    except Exception as error:  # pydantic's serialization error names the type
        raise EventValidationError(f"the task's output is not JSON: {error}") from None
    problem = number_problem(output, "output")
    if problem is not None:
        raise EventValidationError(f"the task's output is not JSON: {problem}")
    data = {
        "instance_id": message.instance_id,
        "seq": message.seq,
        "attempt": message.attempt,
        "output": output,
    }
    return _result(codec, request, message, protocol.TASK_COMPLETED, data)


def failed(
    codec: Codec,
    request: Envelope,
    message: protocol.TaskRequest,
    error_type: str,
    error_message: str,
    *,
    retryable: bool,
) -> NewRecord:
    """The ``overture.task.failed`` record answering an attempt: ``retryable=False`` ends
    the task at once; else the call's retry policy decides."""
    data = {
        "instance_id": message.instance_id,
        "seq": message.seq,
        "attempt": message.attempt,
        "error": {"type": error_type or "Error", "message": error_message},
        "retryable": retryable,
    }
    return _result(codec, request, message, protocol.TASK_FAILED, data)


INVALID_REQUEST = "InvalidTaskRequest"
"""The error type of the failure a worker answers a request it cannot parse with."""


def invalid_request(
    codec: Codec, task_id: str, raw: bytes, reason: str, *, source: str
) -> NewRecord:
    """The non-retryable ``overture.task.failed`` record ending attempt ``task_id``, whose
    request ``raw`` could not be parsed (``reason``): unanswered, the attempt would be
    handed out again at every lease expiry, forever.

    Built from what can still be read: the instance, call and attempt from the attempt's
    id (``protocol.task_attempt_id``), the reply's partition key and partition from the
    request's JSON where they are there. A result the engine cannot match to an instance
    (an id of another form, no readable reply on a partitioned log) is dead-lettered by
    the engine with the reason, so the bad request is kept in sight either way.
    """
    instance_id, seq, attempt = task_id, 0, 1
    if task_id.startswith("task:"):
        head, _, tail = task_id[len("task:") :].rpartition(":")
        instance, _, call = head.rpartition(":")
        if instance and call.isdigit() and tail.isdigit() and int(tail) >= 1:
            instance_id, seq, attempt = instance, int(call), int(tail)
    key: str | None = None
    partition = 0
    event_source = source
    try:
        event: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict):
        if isinstance(event.get("source"), str) and event["source"]:
            event_source = event["source"]
        data = event.get("data")
        reply = data.get("reply") if isinstance(data, dict) else None
        if isinstance(reply, dict):
            if isinstance(reply.get(protocol.PARTITIONKEY), str):
                key = reply[protocol.PARTITIONKEY]
            if isinstance(reply.get("partition"), int) and not isinstance(
                reply.get("partition"), bool
            ):
                partition = max(reply["partition"], 0)
    envelope = Envelope(
        type=protocol.TASK_FAILED,
        data={
            "instance_id": instance_id,
            "seq": seq,
            "attempt": attempt,
            "error": {"type": INVALID_REQUEST, "message": f"invalid task request: {reason}"},
            "retryable": False,
        },
        id=protocol.task_result_id(task_id),
        source=event_source,
        partitionkey=key,
    )
    return NewRecord(
        key, codec.to_bytes(envelope), envelope.id, protocol.TASK_FAILED, partition=partition
    )
