"""The wire protocol: names and message shapes shared by clients, engines and other tools.

Everything a client, an engine, the HTTP API or a worker written in another language must
agree on is named here, once: the CloudEvents extension attributes Overture reads and
writes (:data:`EXTENSIONS`), the Kafka topic and consumer-group names of a namespace
(:func:`events_topic` and the functions next to it), the instance statuses
(:class:`Status`, whose values are what is stored and shown) and the control events below.
This module is a leaf: it imports nothing of the runtime or the backends, so every layer
may use it.

Event types in the ``overture.`` namespace are *control events*: requests to the engine
(cancel an instance, replay a dead letter) and the messages engines exchange between
partitions for waits on keys another partition owns (``runtime/remote.py``). They travel
on the log like any event, so they are input like any other: each type's ``data`` has a
model here, the engine validates every control event against it and dead-letters one that
does not match (with the reason) instead of failing on it, and the client validates the
same way before sending.

Remote tasks (``ctx.call``) use three more: the engine publishes a
:data:`TASK_REQUESTED` event per task *attempt* to the task's queue (not to the log: see
``ports.TaskQueue``), and a worker, in any language, answers it by appending a
:data:`TASK_COMPLETED` or :data:`TASK_FAILED` event to the log, built from the request by
:func:`task_result_id` and the request's ``reply``. ``docs/protocol.md`` is the
language-neutral description of these messages.

Ordinary producers have no business sending these types (once the HTTP API exists the same
door would let anyone cancel or feed instances), so :class:`overture.Client` refuses them
unless the caller passes ``reserved=True`` (``overture send --reserved``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .core.status import FINAL, Status
from .errors import EventValidationError

__all__ = [
    "CANCEL",
    "DEFAULT_QUEUE",
    "DLQ_DELETE",
    "DLQ_REPLAY",
    "EXTENSIONS",
    "FINAL",
    "MAX_QUEUE",
    "PARTITIONKEY",
    "PAYLOADCODEC",
    "RESERVED_PREFIX",
    "TASK_COMPLETED",
    "TASK_FAILED",
    "TASK_REQUESTED",
    "TENANT",
    "TRACEPARENT",
    "WAIT_DELIVER",
    "WAIT_SUBSCRIBE",
    "WAIT_UNSUBSCRIBE",
    "Cancel",
    "Control",
    "DlqDelete",
    "DlqReplay",
    "Reply",
    "Status",
    "TaskCompletion",
    "TaskError",
    "TaskFailure",
    "TaskRequest",
    "WaitDeliver",
    "WaitSubscribe",
    "WaitUnsubscribe",
    "changelog_topic",
    "engine_group",
    "events_topic",
    "internal_topic",
    "is_reserved",
    "parse_control",
    "queue_problem",
    "task_attempt_id",
    "task_result_id",
    "tasks_topic",
    "worker_group",
]

# -- CloudEvents extension attributes -------------------------------------------------------

PARTITIONKEY = "partitionkey"
"""The event's partition (and correlation) key: the CloudEvents *Partitioning* extension.
On Kafka it is also the record key."""
TRACEPARENT = "traceparent"
"""W3C Trace Context ``traceparent`` (``version-traceid-parentid-flags``): the CloudEvents
*Distributed Tracing* extension. An event a process emits continues its trigger's trace."""
TENANT = "tenant"
"""The tenant the event belongs to; an event a process emits inherits its trigger's."""
EXTENSIONS = (PARTITIONKEY, TRACEPARENT, TENANT)
"""The extension attributes Overture gives a meaning to, in the order it writes them."""
PAYLOADCODEC = "payloadcodec"
"""Set on an event whose data a payload codec encoded (compression, encryption): the
codec's name. The data then travels as ``data_base64`` (in Kafka binary mode: the record
value is the codec's output, and the ``ce_payloadcodec`` header names it); a reader must
decode it with that codec (``overture.codec.PayloadCodec``) before it is JSON again."""

# -- Kafka topics and group of a namespace (``kafka://host:port/<namespace>``) ---------------


def events_topic(namespace: str) -> str:
    """The topic producers write events to."""
    return f"{namespace}.events"


def internal_topic(namespace: str) -> str:
    """The topic of events the engines write for each other (re-keyed events, the wait
    control events between partitions)."""
    return f"{namespace}.internal"


def changelog_topic(namespace: str) -> str:
    """The compacted topic holding the engines' state."""
    return f"{namespace}.changelog"


def engine_group(namespace: str) -> str:
    """The consumer group the engines of a namespace form."""
    return f"{namespace}.engine"


def tasks_topic(namespace: str, queue: str) -> str:
    """The topic the engines publish a queue's task requests to."""
    return f"{namespace}.tasks.{queue}"


def worker_group(namespace: str, queue: str) -> str:
    """The consumer group the workers of a queue form (on the queue's tasks topic)."""
    return f"{namespace}.workers.{queue}"


# -- control events -----------------------------------------------------------------------

RESERVED_PREFIX = "overture."
"""Event types starting with this are control events."""

CANCEL = "overture.cancel"
"""Cancel an instance: ``{"instance_id": str}``."""
DLQ_REPLAY = "overture.dlq.replay"
"""Route a dead letter again (or re-run its handler): ``{"id": str}``."""
DLQ_DELETE = "overture.dlq.delete"
"""Delete dead letters of the partition it is sent to: ``{"ids": [str, ...], "reason":
str | null}`` (how ``Client.delete_dead_letters`` deletes on a backend whose engines own
the dead letters, Kafka; the embedded backends delete in one transaction of the file)."""
WAIT_SUBSCRIBE = "overture.wait.subscribe"
"""To the partition of a wait's key: keep a wait for an instance of partition ``home``."""
WAIT_UNSUBSCRIBE = "overture.wait.unsubscribe"
"""To the partition of a wait's key: the wait ended, drop its subscription."""
WAIT_DELIVER = "overture.wait.deliver"
"""To an instance's partition: an event its wait (``instance_id``, ``seq``) matched."""
TASK_REQUESTED = "overture.task.requested"
"""Engine to workers, on the task's queue: run one attempt of a task (:class:`TaskRequest`).
Its CloudEvent ``id`` is the attempt's id (:func:`task_attempt_id`), its ``subject`` the
task's name."""
TASK_COMPLETED = "overture.task.completed"
"""Worker to engine, on the log: an attempt's output (:class:`TaskCompletion`)."""
TASK_FAILED = "overture.task.failed"
"""Worker to engine, on the log: an attempt failed (:class:`TaskFailure`); ``retryable``
false ends the task at once (the process sees ``ov.TaskFailed``), else the engine's retry
policy decides."""
DEFAULT_QUEUE = "default"
"""The queue of a task that names none."""


MAX_QUEUE = 200
"""The longest queue name: with its namespace it must still be a Kafka topic name (249)."""


def queue_problem(queue: object) -> str | None:
    """What makes ``queue`` unusable as a task queue name (None: nothing). A queue is
    a topic on Kafka, so the same rule holds on every backend: 1 to :data:`MAX_QUEUE`
    ASCII letters, digits, ``.``, ``_`` and ``-``."""
    if not isinstance(queue, str) or not queue:
        return f"a task queue name must be a non-empty string, not {queue!r}"
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in queue):
        return f"task queue {queue!r} may hold only ASCII letters, digits, '.', '_' and '-'"
    if len(queue) > MAX_QUEUE:
        return f"task queue name of {len(queue)} characters is over the {MAX_QUEUE} allowed"
    return None


def task_attempt_id(instance_id: str, seq: int, attempt: int) -> str:
    """The id of a task attempt: its request event's id, and its queue entry's."""
    return f"task:{instance_id}:{seq}:{attempt}"


def task_result_id(attempt_id: str) -> str:
    """The event id a worker gives the result of attempt ``attempt_id`` (completed or
    failed alike): a second result of one attempt is a duplicate, dropped by the logs that
    deduplicate event ids and by the engine everywhere else."""
    return f"{attempt_id}:result"


STREAM_REKEYED = "overture.stream.rekeyed"
"""An event a stream operator re-keyed to the partition owning its operator key (data:
``operator``, ``key``, ``event`` in structured form); only the streams runtime reads it."""


def is_reserved(event_type: str) -> bool:
    """Whether ``event_type`` is a control event type (the ``overture.`` namespace)."""
    return event_type.startswith(RESERVED_PREFIX)


class _Message(BaseModel):
    # strict: "1" is not a sequence number and a list is not an id; a message that does
    # not match exactly is dead-lettered rather than coerced into something else
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Cancel(_Message):
    """``overture.cancel``"""

    instance_id: str = Field(min_length=1)


class DlqReplay(_Message):
    """``overture.dlq.replay``"""

    id: str = Field(min_length=1)


class DlqDelete(_Message):
    """``overture.dlq.delete``"""

    ids: list[str] = Field(min_length=1)
    reason: str | None = None


class WaitSubscribe(_Message):
    """``overture.wait.subscribe`` (its partition key is the wait's key)."""

    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    type: str = Field(min_length=1)
    home: int = Field(ge=0)


class WaitUnsubscribe(_Message):
    """``overture.wait.unsubscribe`` (its partition key is the wait's key)."""

    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    type: str = Field(min_length=1)


class WaitDeliver(_Message):
    """``overture.wait.deliver``: ``event`` is the matched CloudEvent, structured form."""

    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    event: dict[str, Any]


class Reply(_Message):
    """Where a task's result goes: append it to the log with this partition key (the
    ``partitionkey`` attribute; on Kafka also the record key) and, on a partitioned log,
    to this partition (the instance's)."""

    partitionkey: str | None
    partition: int = Field(ge=0)


class TaskRequest(_Message):
    """``overture.task.requested``: one attempt of a task.

    ``idempotency_key`` is the same for every attempt of one call (a worker's side effect
    keyed by it happens once however often the task is re-delivered or retried);
    ``deadline`` (Unix time in seconds, or null) is when the engine gives the attempt up:
    a result that arrives later is dropped, so a worker should not start an attempt past
    it.
    """

    task: str = Field(min_length=1)
    queue: str = Field(min_length=1)
    input: Any = None
    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    attempt: int = Field(ge=1)
    idempotency_key: str = Field(min_length=1)
    deadline: float | None = None
    reply: Reply


class TaskCompletion(_Message):
    """``overture.task.completed``: ``output`` is the task's JSON result."""

    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    attempt: int = Field(ge=1)
    output: Any = None


class TaskError(_Message):
    """What went wrong in a task attempt: an error class name and a message."""

    type: str = Field(min_length=1)
    message: str


class TaskFailure(_Message):
    """``overture.task.failed``."""

    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=0)
    attempt: int = Field(ge=1)
    error: TaskError
    retryable: bool = True


Control = (
    Cancel
    | DlqReplay
    | DlqDelete
    | WaitSubscribe
    | WaitUnsubscribe
    | WaitDeliver
    | TaskRequest
    | TaskCompletion
    | TaskFailure
)
"""Any control message."""

MESSAGES: dict[str, type[Control]] = {
    CANCEL: Cancel,
    DLQ_REPLAY: DlqReplay,
    DLQ_DELETE: DlqDelete,
    WAIT_SUBSCRIBE: WaitSubscribe,
    WAIT_UNSUBSCRIBE: WaitUnsubscribe,
    WAIT_DELIVER: WaitDeliver,
    TASK_REQUESTED: TaskRequest,
    TASK_COMPLETED: TaskCompletion,
    TASK_FAILED: TaskFailure,
}
"""The model of each control event type."""


def parse_control(event_type: str, data: Any) -> Control:
    """Validate a control event's data.

    Raises:
        EventValidationError: an unknown control type, or data that does not match its
            model; the message names the type and every field at fault.
    """
    model = MESSAGES.get(event_type)
    if model is None:
        raise EventValidationError(
            f"unknown control event type {event_type!r} (the {RESERVED_PREFIX!r} namespace "
            f"is reserved; known: {', '.join(sorted(MESSAGES))})"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<data>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise EventValidationError(
            f"control event {event_type!r} has invalid data: {problems}"
        ) from None
