"""The observer seam: what the runtime reports at the moments that matter.

Subclass :class:`Observer` and override the methods you need (each default does
nothing), then pass it as ``Engine(app, backend, observer=...)`` (or in
:class:`~overture.runtime.options.EngineOptions`, which ``Host`` and ``overture run`` pass
whole). Metrics and traces are meant to be observers.

Every method is called on the engine's event-loop thread, inside the partition loop: an
observer must be quick and must not raise (an exception would stop the engine, as any
bug in the loop does). Durations are seconds of ``time.monotonic``; times (``due``,
``lateness``) are of the engine's clock.

Rejected design: a Protocol with a ``None`` default, tested with ``if observer is not
None`` at every call site. A class with no-op methods keeps each call site one line, and
the measured cost of the no-op calls on W1 is within noise (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..events import Envelope


class AttemptTrace(Protocol):
    """What :meth:`Observer.attempt_trace` returns for one step, handler or task attempt:
    the tracing observer's span of it."""

    def enter(self) -> None:
        """Make the attempt's span the current trace context of the calling context (the
        executor calls it inside the attempt's own context copy, so it never leaks)."""

    def end(self, ok: bool, error: BaseException | None) -> None:
        """The attempt ended (``error``: its exception when it failed, if known)."""


class Observer:
    """No-op base class of observers; override what you need."""

    traces: ClassVar[bool] = False
    """Whether this observer wants the trace hooks below (``record_routing`` to
    ``task_requested``): the runtime calls them, and builds their arguments, only for an
    observer that sets this (the tracing observer), so they cost nothing otherwise."""

    def batch_consumed(self, partition: int, records: int) -> None:
        """``records`` log records of ``partition`` were read into the batch being staged."""

    def instance_started(self, instance_id: str, process: str) -> None:
        """A trigger started a new instance (not a replay of an existing one)."""

    def instance_finished(self, instance_id: str, process: str, status: str) -> None:
        """An instance reached a final status (completed, failed, cancelled)."""

    def instance_parked(self, instance_id: str, process: str, reason: str) -> None:
        """An instance was parked as stuck (non-determinism, an unregistered version)."""

    def step_started(self, name: str, attempt: int, instance_id: str | None) -> None:
        """An attempt of a step (``instance_id`` set) or of a handler run (None) began."""

    def step_finished(
        self, name: str, attempt: int, instance_id: str | None, ok: bool, duration: float
    ) -> None:
        """That attempt ended; ``duration`` is from its start until the engine took its
        outcome (a retry is a new attempt with its own pair of calls)."""

    def task_published(self, task: str, attempt: int, instance_id: str, queue: str) -> None:
        """An attempt of a remote task (``ctx.call``) was published to ``queue`` with the
        batch being staged."""

    def task_finished(self, task: str, attempt: int, instance_id: str, outcome: str) -> None:
        """That attempt ended with a result the engine applied (``outcome``:
        ``"completed"`` or ``"failed"``), or at its deadline (``"timed out"``)."""

    def task_result_dropped(self, attempt_id: str, reason: str) -> None:
        """A task result changed nothing (a stale attempt, a duplicate, one after its
        deadline or after its instance ended)."""

    def commit_started(self, rows: int, appends: int) -> None:
        """A batch's commit began: ``rows`` state rows and ``appends`` appended events."""

    def commit_finished(self, rows: int, appends: int, duration: float) -> None:
        """That commit is durable (on SQLite and Kafka it ran while the next batch was
        being staged; ``duration`` is from its start until the engine saw it done)."""

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        """An input was dead-lettered (``source``: decode, validate, route, handler:NAME)."""

    def timer_fired(self, instance_id: str, lateness: float) -> None:
        """A durable timer (a sleep, or a wait's timeout) fired ``lateness`` seconds after
        it was due."""

    def rebalance(self, assigned: Sequence[int], revoked: Sequence[int]) -> None:
        """The host was assigned or had revoked these partitions (Kafka)."""

    # -- gauges (metrics) --

    def tasks_open(self, queue: str, count: int) -> None:
        """``count`` task attempts are open (published, not ended) on ``queue`` now: told
        whenever the number changes, also while the open attempts are counted again from
        the stored rows at start."""

    # -- the instance cache (metrics: cache hits and replays) --

    def instance_loaded(self, instance_id: str, process: str, replayed: int | None) -> None:
        """An input reached a live instance: found in the cache (``replayed`` None) or
        rebuilt by replaying ``replayed`` journal entries (evicted, or after a restart)."""

    # -- traces (called only when ``traces`` is true) --

    def record_routing(self, envelope: Envelope, partition: int, offset: int) -> None:
        """The engine starts routing this decoded record (at ``partition``/``offset``):
        whatever it starts, resumes or schedules until :meth:`record_routed` is its work."""

    def record_routed(self) -> None:
        """The record told last to :meth:`record_routing` is routed."""

    def segment_resumed(
        self, instance_id: str, process: str, version: int, trigger: str | None
    ) -> None:
        """An input (its trigger, an event, a timer, a step outcome, a task result, a
        cancel) makes the instance run its code; ``trigger``: the traceparent of the
        event that started it. Called before each run of its code, several times in one
        segment (until :meth:`segment_flushed` says it blocked)."""

    def segment_flushed(self, instance_id: str, status: str, busy: bool) -> None:
        """The instance's changes of this batch are staged: ``busy`` when a step of it is
        still running (its segment goes on), else it blocks (waits for an event, a timer,
        a task) or has finished, with ``status``."""

    def instances_released(self, instance_ids: Sequence[str]) -> None:
        """The engine let go of these cached instances (it stopped, or was abandoned):
        whatever is still open for them ends (a segment whose step was still running)."""

    def emitted(self, instance_id: str, envelope: Envelope) -> None:
        """The instance emitted this event (with the batch being staged; never for an
        emit replayed from its journal)."""

    def task_requested(self, instance_id: str, queue: str, envelope: Envelope) -> None:
        """The instance published a task attempt's request to ``queue``."""

    def attempt_trace(
        self,
        kind: str,
        name: str,
        attempt: int,
        instance_id: str | None,
        trace: str | None,
    ) -> AttemptTrace | None:
        """An attempt begins (``kind``: ``"step"`` with its instance, or ``"handler"``
        with the traceparent of its event): its span, or None."""
        return None


NO_OBSERVER = Observer()
"""The default observer (shared: it has no state), so default options compare equal."""


def _hooks() -> list[str]:
    return [
        name
        for name, value in vars(Observer).items()
        if not name.startswith("_") and callable(value)
    ]


def combine(*observers: Observer) -> Observer:
    """One observer telling each of ``observers`` in turn (metrics and traces, say).

    A hook none of them overrides stays the base class's no-op, and one that only one of
    them overrides is that observer's own bound method: combining costs nothing on the
    hooks that are not shared. With no observer (or only no-op ones) this is
    :data:`NO_OBSERVER`; with one, that observer itself.
    """
    chosen = [o for o in observers if any(_overrides(o, name) for name in _hooks())]
    if not chosen:
        return NO_OBSERVER
    if len(chosen) == 1:
        return chosen[0]
    return _Combined(chosen)


def _overrides(observer: Observer, name: str) -> bool:
    return getattr(type(observer), name) is not getattr(Observer, name)


class _Combined(Observer):
    """What :func:`combine` builds for two or more observers."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = tuple(observers)
        self.traces = any(o.traces for o in observers)  # type: ignore[misc]
        for name in _hooks():
            methods = [getattr(o, name) for o in observers if _overrides(o, name)]
            if len(methods) == 1:
                setattr(self, name, methods[0])
            elif methods:
                setattr(self, name, _fan_out(methods))

    def __repr__(self) -> str:
        return f"combine({', '.join(map(repr, self.observers))})"


def _fan_out(methods: list[Callable[..., Any]]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        result = None  # (attempt_trace: the first span returned wins)
        for method in methods:
            value = method(*args)
            if result is None:
                result = value
        return result

    return call
