"""The futures and bookkeeping of one instance's durable operations (the machine's
scheduler resolves them; process code awaits them)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .commands import StepCall, TaskCall
from .context import DurableFuture as DurableFutureABC

T = TypeVar("T")


class Future(DurableFutureABC[T]):
    __slots__ = ("_callbacks", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._done, self._result = True, value
        self._fire()

    def set_error(self, error: BaseException) -> None:
        self._done, self._error = True, error
        self._fire()

    def add_callback(self, callback: Callable[[], None]) -> None:
        if self._done:
            callback()
        else:
            self._callbacks.append(callback)

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            yield self
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[no-any-return]


@dataclass(slots=True)
class Pending:
    op: str
    name: str
    future: Future[Any]
    convert: Callable[[Any], Any]
    """Makes the value the code gets of a journaled outcome (a typed result, an event)."""
    call: StepCall | None = None
    task: TaskCall | None = None
    wait: tuple[str, str | None] | None = None


@dataclass(slots=True)
class Compensation:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
