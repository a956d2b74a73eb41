"""The engine's options: one frozen, keyword-only object, validated once.

``Engine``, ``Host``, the CLI and the test ``Harness`` all pass one :class:`EngineOptions`
whole, so a new option is added in one place instead of being threaded through three
layers argument by argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from ..errors import ConfigError
from ..retention import DEFAULT_RETENTION
from .observer import NO_OBSERVER, Observer


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineOptions:
    """How an engine runs. Every field has the default ``Engine`` always had.

    Raises:
        ConfigError: a value out of range (checked when the object is made).
    """

    cache_size: int = 10_000
    """Live instances kept in memory; 0 replays every instance on every input (the test
    suite runs that way to prove replay is faithful)."""

    batch_size: int = 500
    """Most log records taken per iteration (the group-commit size)."""

    group: str | None = None
    """Consumer group name; None: ``engine:<app name>``."""

    partitions: Sequence[int] | None = None
    """The log partitions this engine consumes (None: all of them). An engine that owns
    only some re-keys an event whose key belongs to another partition: it forwards the
    event there instead of routing it, so every input of an instance is handled by its
    partition's engine."""

    gc_threshold: int | None = 20_000
    """While the engine runs, CPython's first garbage-collector threshold is raised to
    at least this (``runtime/gcpolicy.py``: the default 700 made full collections a third
    of the engine's CPU); None leaves it alone."""

    threads: int = 16
    """Size of the pool that runs sync steps and handlers. It bounds how many run at
    once, so blocking steps bound throughput: with 16 threads and 10 ms of I/O per step,
    W1's three steps per instance cap it near 530 instances/s."""

    sync_fold: float | None = 0.002
    """Seconds the engine may wait, after driving a batch, for the sync steps (and
    handlers) that batch started, so that their outcomes are applied in the same batch and
    commit. It repeats while the outcomes so applied start new calls, each round waiting
    at most this long and the batch at most four times this in all; a call still running
    then reports in a later batch. 0 or None: never wait."""

    max_open_tasks_per_queue: int = 10_000
    """Most open attempts (published, not yet ended) the engine keeps on each task
    queue. Calls beyond it wait durably, in the order they were made, and are published
    as open attempts end (``runtime/backpressure.py``), so a burst of calls does not
    flood the queue its workers read."""

    retention: timedelta | None = DEFAULT_RETENTION
    """How long a finished instance (completed, failed, cancelled) is kept, counted from
    its finish on the engine clock; then the engine deletes it with its journal, waits,
    work rows, buffered events and ended task attempts (``runtime/retention.py``).
    ``timedelta(0)``: deleted as soon as it finished; None: kept forever."""

    dlq_retention: timedelta | None = None
    """How long a dead letter is kept, counted from when it was parked (engine clock);
    then the engine's retention passes delete it. None (the default): kept until
    replayed or deleted (``overture dlq delete``)."""

    observer: Observer = NO_OBSERVER
    """Told of batches, instances, step attempts, commits, dead letters, timers and
    rebalances (``runtime/observer.py``); the default does nothing."""

    def __post_init__(self) -> None:
        _count("cache_size", self.cache_size, 0)
        _count("batch_size", self.batch_size, 1)
        _count("max_open_tasks_per_queue", self.max_open_tasks_per_queue, 1)
        _count("threads", self.threads, 1, "the step thread pool needs at least one thread")
        if self.gc_threshold is not None:
            _count("gc_threshold", self.gc_threshold, 1)
        if self.sync_fold is not None and not (
            isinstance(self.sync_fold, int | float)
            and not isinstance(self.sync_fold, bool)
            and math.isfinite(self.sync_fold)
            and self.sync_fold >= 0
        ):
            raise ConfigError(
                f"sync_fold must be a number of seconds >= 0 (or None), not {self.sync_fold!r}"
            )
        if self.retention is not None and not (
            isinstance(self.retention, timedelta) and self.retention >= timedelta(0)
        ):
            raise ConfigError(
                f"retention must be a timedelta >= 0 (or None: forever), not {self.retention!r}"
            )
        if self.dlq_retention is not None and not (
            isinstance(self.dlq_retention, timedelta) and self.dlq_retention >= timedelta(0)
        ):
            raise ConfigError(
                "dlq_retention must be a timedelta >= 0 (or None: until replayed or deleted), "
                f"not {self.dlq_retention!r}"
            )
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ConfigError(f"group must be a non-empty name (or None), not {self.group!r}")
        if self.partitions is not None:
            partitions = tuple(self.partitions)
            if not partitions:
                raise ConfigError("partitions must name at least one partition (or be None)")
            for p in partitions:
                _count("partitions[...]", p, 0)
            # a tuple: the options stay immutable whatever sequence the caller passed
            object.__setattr__(self, "partitions", partitions)

    @property
    def fold_seconds(self) -> float:
        """``sync_fold`` as a number (0.0: never wait)."""
        return self.sync_fold or 0.0


def _count(name: str, value: object, least: int, message: str | None = None) -> None:
    """Refuse anything but an integer >= ``least`` (``True`` is not a count)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(message or f"{name} must be an integer >= {least}, not {value!r}")
