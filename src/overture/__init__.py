"""Overture: event-driven durable process orchestration.

The public API is exactly what ``__all__`` lists (pinned by ``tests/test_exports.py``).
"""

from __future__ import annotations

from .app import App
from .async_client import AsyncClient
from .client import Client, Instance, LoggedEvent
from .core.context import Context, DurableFuture
from .errors import (
    ConfigError,
    EngineBusy,
    EventError,
    EventValidationError,
    InstanceFailed,
    MalformedEvent,
    NonDeterminismError,
    NotFound,
    OperationAbandoned,
    OvertureError,
    ProcessError,
    StepFailed,
    StorageError,
    StorageFull,
    StorageLocked,
    StorageReplaced,
    TaskFailed,
    TerminalError,
    UnknownEventType,
    WaitTimeout,
)
from .events import Envelope, Event
from .policies import Retry
from .protocol import Status
from .runtime.clock import SystemClock, VirtualClock
from .runtime.engine import Engine
from .runtime.executor import StepInfo, current_step

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Context",
    "DurableFuture",
    "Engine",
    "EngineBusy",
    "Envelope",
    "Event",
    "EventError",
    "EventValidationError",
    "Instance",
    "InstanceFailed",
    "LoggedEvent",
    "MalformedEvent",
    "NonDeterminismError",
    "NotFound",
    "OperationAbandoned",
    "OvertureError",
    "ProcessError",
    "Retry",
    "Status",
    "StepFailed",
    "StepInfo",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "StorageReplaced",
    "SystemClock",
    "TaskFailed",
    "TerminalError",
    "UnknownEventType",
    "VirtualClock",
    "WaitTimeout",
    "__version__",
    "current_step",
]
