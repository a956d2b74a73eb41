"""Options for durable operations: frozen, keyword-only, ``timedelta`` durations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from .errors import ConfigError, TerminalError


@dataclass(frozen=True, kw_only=True)
class Retry:
    """How a failing step, handler or remote task (``ctx.call``) is retried.

    The delay before attempt ``n + 1`` is ``initial_interval * backoff ** (n - 1)``, capped at
    ``max_interval``. Retries are durable: the next attempt's due time is committed, so a
    crash during backoff resumes the schedule rather than restarting it.
    """

    max_attempts: int = 3
    """Total attempts including the first; 1 means never retry."""
    initial_interval: timedelta = timedelta(seconds=1)
    """Delay before the second attempt."""
    backoff: float = 2.0
    """Multiplier applied to the delay after each failed attempt."""
    max_interval: timedelta = timedelta(minutes=1)
    """Upper bound of any single delay."""
    non_retryable: tuple[type[BaseException], ...] = field(default=())
    """Exception types that fail the step at once (``TerminalError`` always does). For a
    remote task, whose error comes from a worker as a type *name*, the classes' names are
    compared with it."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("Retry.max_attempts must be at least 1")
        if self.backoff < 1.0:
            raise ConfigError("Retry.backoff must be at least 1.0")
        if self.initial_interval < timedelta(0) or self.max_interval < timedelta(0):
            raise ConfigError("Retry intervals must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        seconds = self.initial_interval.total_seconds() * self.backoff ** (attempt - 1)
        return min(seconds, self.max_interval.total_seconds())

    def retryable(self, error: BaseException, attempt: int) -> bool:
        """Whether ``error`` raised by attempt ``attempt`` deserves another attempt."""
        if attempt >= self.max_attempts or isinstance(error, TerminalError):
            return False
        return not isinstance(error, self.non_retryable)


DEFAULT_RETRY = Retry()
"""Policy used by steps and handlers that do not name one."""
