"""Pin the public API: changing it must be a deliberate act."""

from __future__ import annotations

import overture as ov

STREAM_WINDOWS = {  # streams: windows and aggregations (issue 13)
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
}


STREAM_PATTERNS = {"Match", "Pattern", "begin"}  # streams: event patterns (issue 13)


def test_stream_patterns_are_exported() -> None:
    assert set(ov.__all__) >= STREAM_PATTERNS


def test_stream_windows_are_exported() -> None:
    assert set(ov.__all__) >= STREAM_WINDOWS


def test_public_api_is_exactly_this() -> None:
    assert sorted(set(ov.__all__) - STREAM_WINDOWS - STREAM_PATTERNS) == [
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
