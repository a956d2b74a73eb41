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

# streams: windows and aggregations (issue 13)
from .streams.aggregates import Count, CountDistinct, Last, Max, Mean, Min, Reduce, Sum, TopK

# streams: event patterns (issue 13)
from .streams.patterns import Match, Pattern, begin
from .streams.windows import Hopping, Session, Sliding, Tumbling, WindowResult

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

# streams: windows and aggregations (issue 13)
__all__ += [
    "Count",
    "CountDistinct",
    "Hopping",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Reduce",
    "Session",
    "Sliding",
    "Sum",
    "TopK",
    "Tumbling",
    "WindowResult",
]

# streams: event patterns (issue 13)
__all__ += ["Match", "Pattern", "begin"]
