"""Pin the public API: changing it must be a deliberate act."""

from __future__ import annotations

import overture as ov


def test_public_api_is_exactly_this() -> None:
    assert sorted(ov.__all__) == [
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
    for name in ov.__all__:
        assert getattr(ov, name) is not None


def test_error_tree_matches_its_docstring() -> None:
    assert issubclass(ov.WaitTimeout, ov.ProcessError)
    assert issubclass(ov.StepFailed, ov.ProcessError)
    assert issubclass(ov.TaskFailed, ov.ProcessError)
    assert issubclass(ov.EventValidationError, ov.EventError)
    assert issubclass(ov.MalformedEvent, ov.EventError)
    assert issubclass(ov.TerminalError, ov.OvertureError)
    assert not issubclass(ov.NonDeterminismError, Exception)
