"""The interface process code uses for every durable operation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload
from uuid import UUID

from ..events import Event
from ..policies import Retry

T = TypeVar("T")
E = TypeVar("E", bound=Event)


class DurableFuture(ABC, Awaitable[T]):
    """The awaitable result of a durable operation.

    The operation is scheduled when the ``ctx`` method is *called*, not when the future is
    awaited, so several steps started before awaiting run in parallel.
    """

    @abstractmethod
    def done(self) -> bool:
        """Whether the operation has a result (or an error)."""


class Context(ABC):
    """The only source of time, randomness and side effects in process code.

    Every method that touches the outside world is journaled; after a crash the process is
    rebuilt by replaying its code against the journal, so process code must be
    deterministic apart from what it gets through this object.
    """

    @property
    @abstractmethod
    def instance_id(self) -> str:
        """This instance's id."""

    @property
    @abstractmethod
    def key(self) -> str | None:
        """This instance's correlation key."""

    @property
    @abstractmethod
    def is_replaying(self) -> bool:
        """True while the code is re-executed against the journal (for logging only)."""

    @property
    @abstractmethod
    def idempotency_key(self) -> str:
        """The idempotency key the *next* ``step`` (or ``call``) will carry.

        Pass it to an external service as an argument of that step::

            await ctx.step(charge, order, ctx.idempotency_key)

        It is stable across retries and crash re-executions of that step, so the service
        can deduplicate. Inside a running step it is also available as
        ``overture.current_step().idempotency_key``.
        """

    @overload
    def step(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: Retry | None = ...,
        timeout: timedelta | None = ...,
        name: str | None = ...,
        inline: bool = ...,
        **kwargs: Any,
    ) -> DurableFuture[T]: ...

    @overload
    def step(
        self,
        fn: Callable[..., T],
        *args: Any,
        retry: Retry | None = ...,
        timeout: timedelta | None = ...,
        name: str | None = ...,
        inline: bool = ...,
        **kwargs: Any,
    ) -> DurableFuture[T]: ...

    @abstractmethod
    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        name: str | None = None,
        inline: bool = False,
        **kwargs: Any,
    ) -> DurableFuture[Any]:
        """Run ``fn(*args, **kwargs)`` at least once, outside the engine's critical section.

        Its result is journaled, so on replay ``fn`` is not called again. Failures are
        retried per ``retry``; a final failure raises :class:`~overture.StepFailed`.
        Sync functions run in the engine's thread pool (``Engine(threads=)``,
        ``overture run --threads``); async ones on the engine's loop.

        Args:
            retry: how failed attempts are retried (default :data:`~overture.Retry` ()).
            timeout: an attempt still running after this long fails with
                ``TimeoutError`` and is retried per ``retry``. An async step is cancelled;
                a sync step's thread cannot be stopped, so it is abandoned (its late
                result is ignored, a warning is logged) and the pool replaces it.
            name: the step's name in the journal (default: the function's qualified name).
            inline: for a sync function its author knows never blocks (pure
                computation, no I/O): run it on the engine's thread, without the
                thread hand-off. A blocking inline step stalls the whole engine (the
                watchdog logs it by name), and ``timeout`` cannot apply to it.
        """

    @abstractmethod
    def call(
        self,
        task: str,
        input: Any = None,
        *,
        timeout: timedelta | None = None,
        retry: Retry | None = None,
        queue: str | None = None,
    ) -> DurableFuture[Any]:
        """Run the remote task ``task`` on a worker (``@app.task``, ``overture worker``,
        or a worker in any language speaking ``docs/protocol.md``), at least once.

        Each attempt is published to the task's queue when this batch commits; its result
        is journaled, so on replay nothing is published again. The engine owns retries
        and timeouts: an attempt still unanswered at its deadline is given up (a late
        result of it is dropped) and counts as a retryable ``TaskTimeout`` failure; a
        failed attempt is retried per ``retry`` after its backoff, durably. Every attempt
        carries the same idempotency key (``"<instance>:<seq>"``). A task no app defines
        is allowed: its worker may be written in another language.

        Args:
            task: the task's name, e.g. ``"shipping.create"``.
            input: the task's input: anything JSON can hold (models and dataclasses
                are converted).
            timeout: how long one attempt may take (default: the task definition's;
                else attempts have no deadline).
            retry: how failed attempts are retried (default: the task definition's,
                else :data:`~overture.Retry` ()); a worker's error whose type name is one
                of ``non_retryable``'s class names (or ``TerminalError``) ends the task.
            queue: the queue its attempts go to (default: the definition's, else
                ``"default"``).

        Returns:
            The output the worker reported (JSON).

        Raises:
            TaskFailed: the worker reported a non-retryable failure, or the policy
                allows no further attempt (with the worker's error type and message,
                ``"TaskTimeout"`` when the last attempt ran out of time).
            EventValidationError: ``input`` is not JSON (raised at the call, nothing
                journaled or published).
        """

    @overload
    def wait_for(
        self, event: type[E], *, key: str | None = ..., timeout: timedelta | None = ...
    ) -> DurableFuture[E]: ...

    @overload
    def wait_for(
        self, event: str, *, key: str | None = ..., timeout: timedelta | None = ...
    ) -> DurableFuture[Event]: ...

    @abstractmethod
    def wait_for(
        self,
        event: type[Event] | str,
        *,
        key: str | None = None,
        timeout: timedelta | None = None,
    ) -> DurableFuture[Any]:
        """Wait for an event of that type whose correlation key equals ``key``.

        ``key`` defaults to this instance's key. An event keyed with the *instance's own
        key* that arrived while the instance was running but not yet waiting is buffered
        and delivered here; an event for another key counts only from the moment the
        wait is registered.

        Raises:
            WaitTimeout: ``timeout`` passed first (a durable timer).
        """

    @abstractmethod
    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        """A durable timer: survives restarts; fires once ``duration`` has passed."""

    @abstractmethod
    def emit(
        self, event: Event | str, data: dict[str, Any] | None = None, *, key: str | None = None
    ) -> str:
        """Publish an event exactly once, atomically with this step of the instance.

        ``event`` is an :class:`~overture.Event` instance, or a type name with ``data``.
        The key defaults to the event's own key field, then to the instance's key.
        Returns the event id.

        The event carries on its trigger's context: it inherits the trigger's ``tenant``,
        and when the trigger has a W3C ``traceparent`` it continues that trace (the same
        trace id and flags, a new parent id derived from the instance id and this
        operation's sequence number, so a replay emits the identical event). A trigger
        without a ``traceparent`` starts no trace here: the emitted event has none.
        Either attribute set explicitly on the event
        (``event.with_attributes(tenant=..., traceparent=...)``) wins.

        Raises:
            EventValidationError: the data is not JSON, or an explicit ``traceparent`` is
                not W3C trace context.
        """

    @abstractmethod
    def compensate_with(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Register a compensation (saga). Compensations run LIFO on ``compensate()``, and
        automatically if the process fails."""

    @abstractmethod
    async def compensate(self) -> None:
        """Run the registered compensations, newest first, each as a durable step."""

    @abstractmethod
    def gather(self, *operations: Awaitable[Any]) -> DurableFuture[list[Any]]:
        """Run durable operations or sub-coroutines in parallel; wait for all of them.

        Returns their results in argument order; if any failed, raises the first failure
        in argument order once all have finished.
        """

    @abstractmethod
    def first(self, *operations: Awaitable[Any]) -> DurableFuture[int]:
        """Wait until one of the operations (or sub-coroutines) has finished; returns its
        position in the arguments. Await that operation for its value or its error; the
        others go on (``abandon`` them if their outcome no longer matters)::

            offers = [ctx.call("driver.offer", {"driver": d}) for d in drivers]
            while offers:
                i = await ctx.first(*offers)
                offer = offers.pop(i)
                if (await offer)["accepted"]:
                    ctx.abandon(*offers)
                    break

        Deterministic on replay: operations finish in the journal's order, and of those
        already finished when it is called the first in argument order wins.
        """

    @abstractmethod
    def abandon(self, *operations: DurableFuture[Any]) -> None:
        """Stop waiting for pending operations: a task call's open attempt is withdrawn
        from its queue (no worker claims it; a result for it is dropped), a step's
        retries and outcome are dropped (an attempt already running runs to its end), a
        timer or a wait is removed. Awaiting an abandoned operation raises
        :class:`~overture.OperationAbandoned`; finished ones are left as they are. The
        abandonment is journaled, so a replay abandons the same operations.
        """

    @abstractmethod
    def now(self) -> datetime:
        """The (journaled) time of the input being processed, UTC."""

    @abstractmethod
    def uuid(self) -> UUID:
        """A UUID that is the same on every replay."""

    @abstractmethod
    def random(self) -> float:
        """A float in [0, 1) that is the same on every replay."""
