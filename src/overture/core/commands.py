"""What a :class:`~overture.core.machine.Machine` asks the runtime to do (its commands),
and the process definition it runs (``ProcessSpec``)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..events import Envelope, Event
from ..policies import Retry
from .context import Context
from .status import Status


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What the core needs to know about a process definition."""

    name: str
    version: int
    fn: Callable[[Context, Any], Coroutine[Any, Any, Any]]
    event_class: type[Event]
    app_name: str = "overture"


# -- commands (outputs to the runtime) ----------------------------------------------------


@dataclass(slots=True)
class StepCall:
    """A step the runtime must execute (again, after a crash)."""

    instance_id: str
    seq: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retry: Retry
    timeout: float | None
    inline: bool = False
    """A sync step its author declared non-blocking: run on the engine's thread."""

    @property
    def idempotency_key(self) -> str:
        return f"{self.instance_id}:{self.seq}"


@dataclass(slots=True)
class ScheduleStep:
    call: StepCall


@dataclass(slots=True)
class TaskCall:
    """A remote task a process called (``ctx.call``): its attempts are published to a
    queue for workers. The options are the call's own (None: the app's ``@app.task``
    definition decides, which the runtime looks up; the core knows no app)."""

    instance_id: str
    seq: int
    task: str
    input: Any
    """The task's input, already in its JSON form."""
    timeout: float | None = None
    """Seconds one attempt may take (None: the task definition's, else no deadline)."""
    retry: Retry | None = None
    queue: str | None = None
    traceparent: str | None = None
    """The trigger's trace, continued for this call (every attempt carries it)."""
    tenant: str | None = None

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this call."""
        return f"{self.instance_id}:{self.seq}"


@dataclass(slots=True)
class ScheduleTask:
    call: TaskCall


@dataclass(slots=True)
class StartTimer:
    seq: int
    due: float


@dataclass(slots=True)
class StartWait:
    seq: int
    event_type: str
    key: str | None
    due: float | None


@dataclass(slots=True)
class EmitEvent:
    seq: int
    envelope: Envelope


@dataclass(slots=True)
class Abandon:
    """The code stopped waiting for operation ``seq`` (``ctx.abandon``): drop its work
    row, its open task attempt, its wait."""

    seq: int


@dataclass(slots=True)
class Finished:
    status: Status
    result: Any = None
    error: dict[str, str] | None = None


Command = ScheduleStep | ScheduleTask | StartTimer | StartWait | EmitEvent | Abandon | Finished
