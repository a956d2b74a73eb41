"""The one exception tree of Overture.

::

    OvertureError                   base of everything Overture raises
    ├── ConfigError                 bad backend URL, unknown app path, invalid definitions
    ├── EventError                  an event could not be accepted (nothing was written)
    │   ├── MalformedEvent          bytes/JSON that are not a CloudEvent
    │   ├── UnknownEventType        a type the app does not know, where one is required
    │   └── EventValidationError    data that violates the event type's schema
    ├── NotFound                    no instance / dead letter with that id
    ├── InstanceFailed              a client asked for the result of a failed/cancelled instance
    ├── EngineBusy                  another engine process already owns the database
    ├── StorageError                the embedded database could not be used (I/O error, …)
    │   ├── StorageFull             the disk (or the database's size limit) is full; nothing written
    │   ├── StorageLocked           another process holds the database's write lock too long
    │   └── StorageReplaced         the database file was deleted or replaced while open
    ├── BrokerUnavailable           the Kafka cluster cannot be reached (or refused us)
    │   └── Fenced                  another engine took over this engine's partition
    ├── TerminalError               raised by step/handler code: fail now, never retry
    └── ProcessError                raised *inside process code* by ctx operations
        ├── WaitTimeout             ``ctx.wait_for`` timed out (catch it to compensate)
        └── StepFailed              a step exhausted its retries or raised TerminalError

    NonDeterminismError (BaseException)  replay diverged from the journal; the instance is
                                         parked as ``stuck``. It derives from BaseException so
                                         that ``except Exception`` in process code cannot
                                         swallow it.

Retryable vs terminal: any exception raised by a step or handler is retried according to
its :class:`~overture.Retry` policy, except :class:`TerminalError` and the exception types
listed in ``Retry.non_retryable``.
"""

from __future__ import annotations


class OvertureError(Exception):
    """Base class of every error Overture raises."""


class ConfigError(OvertureError):
    """Invalid configuration: backend URL, app path, process or event definitions."""


class EventError(OvertureError):
    """An event was rejected; nothing was written."""


class MalformedEvent(EventError):
    """Input that is not a valid CloudEvent (bad JSON, missing attributes)."""


class UnknownEventType(EventError):
    """An event type the app does not define, where a defined one is required."""


class EventValidationError(EventError):
    """Event data that does not match the schema of its type."""


class NotFound(OvertureError):
    """No instance, or dead letter, with the given id."""


class InstanceFailed(OvertureError):
    """The instance whose result a client asked for failed or was cancelled.

    Attributes:
        instance_id: the instance.
        status: ``"failed"`` or ``"cancelled"``.
        error: the error the instance recorded (as stored: usually a dict with the
            exception's type and message), or ``None``.
    """

    def __init__(self, instance_id: str, status: str, error: object) -> None:
        detail = ""
        if isinstance(error, dict) and ("type" in error or "message" in error):
            detail = f": {error.get('type', 'error')}: {error.get('message', '')}"
        elif error is not None:
            detail = f": {error}"
        super().__init__(f"instance {instance_id} {status}{detail}")
        self.instance_id = instance_id
        self.status = status
        self.error = error


class EngineBusy(OvertureError):
    """Another engine process already owns this embedded database."""


class StorageError(OvertureError):
    """The embedded database could not be read or written (the message says what SQLite
    and the operating system reported). A write that raised was rolled back: nothing of
    it was written."""


class StorageFull(StorageError):
    """The disk holding the embedded database is full (or the database reached its size
    limit); the write was rolled back, so nothing was written. Retrying after freeing
    space is safe."""


class StorageLocked(StorageError):
    """Another process held the database's write lock for longer than the busy timeout
    (a writer stuck mid-transaction, or a process stopped while it held the lock); nothing
    was written. Retrying once that process has let go is safe."""


class StorageReplaced(StorageError):
    """The database file was deleted, moved or replaced by another file after it was
    opened; nothing more is written to it, since what was written would be lost or land
    in a file nobody reads. Reopen (restart the engine) to use the file now at the path."""


class BrokerUnavailable(OvertureError):
    """The Kafka cluster could not be reached in time, or refused a request; nothing the
    call was asked to write was acknowledged. Retrying later is safe."""


class Fenced(BrokerUnavailable):
    """Another engine process took over this partition (its transactions fence ours);
    this engine must stop working on it and let the group's rebalance settle."""


class TerminalError(OvertureError):
    """Raise from a step or handler to fail it at once, without retrying."""


class ProcessError(OvertureError):
    """Base of the errors that ctx operations raise inside process code."""


class WaitTimeout(ProcessError):
    """``ctx.wait_for`` reached its timeout before a matching event arrived."""

    def __init__(self, event_type: str, key: str | None) -> None:
        super().__init__(f"no {event_type!r} event with key {key!r} arrived in time")
        self.event_type = event_type
        self.key = key


class StepFailed(ProcessError):
    """A step failed for good: retries exhausted, or it raised a non-retryable error.

    Attributes:
        step: the step's name.
        error_type: the class name of the last exception the step raised.
        message: that exception's message.
        attempts: how many attempts were made.
    """

    def __init__(self, step: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(
            f"step {step!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.step = step
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class TaskFailed(ProcessError):
    """A remote task (``ctx.call``) failed for good: retries exhausted, its worker
    reported a non-retryable failure, or its attempts kept timing out.

    Attributes:
        task: the task's name.
        error_type: the error class name the worker reported (``"TaskTimeout"`` when the
            last attempt reached its deadline).
        message: the worker's message.
        attempts: how many attempts were made.
    """

    def __init__(self, task: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(
            f"task {task!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )
        self.task = task
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class OperationAbandoned(ProcessError):
    """Awaiting an operation the process abandoned (``ctx.abandon``)."""

    def __init__(self, operation: str, name: str) -> None:
        super().__init__(f"the {operation} {name!r} was abandoned")
        self.operation = operation
        self.name = name


class NonDeterminismError(BaseException):
    """Replay asked for something other than what the journal recorded.

    The instance is parked as ``stuck`` with this message as its reason; its journal is
    left untouched so that fixed code can resume it.
    """
