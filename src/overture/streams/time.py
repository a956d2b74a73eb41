"""Event time: where an operator reads it, and durations as seconds.

Event time is the CloudEvents ``time`` attribute, or a data field (``time_field=``)
holding ISO-8601 text (an offset-less time is UTC) or epoch seconds. Inside the streams
runtime every time is a float of epoch seconds.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ConfigError
from ..events import Event
from .operator import OperatorInputError

_EARLIEST = datetime(2, 1, 1, tzinfo=UTC).timestamp()
_LATEST = datetime(9998, 12, 31, tzinfo=UTC).timestamp()
"""The event times accepted as epoch seconds: a year inside the ``datetime`` range on
either side, so that the bounds of any window an event opens (``WindowResult.start`` and
``end``) are datetimes too."""


def event_time(event: Event, time_field: str | None) -> float:
    """The event time of ``event`` in epoch seconds.

    Raises:
        OperatorInputError: the field is missing, or not a time.
    """
    if time_field is None:
        return event.envelope.time.timestamp()
    data = event.envelope.data
    if not isinstance(data, dict) or time_field not in data:
        raise OperatorInputError(f"event time: the data has no field {time_field!r}")
    return parse_time(data[time_field], time_field)


def parse_time(value: Any, name: str) -> float:
    """A time value (ISO-8601 text, epoch seconds, a datetime) as epoch seconds.

    Raises:
        OperatorInputError: not a usable time.
    """
    if isinstance(value, bool):
        raise OperatorInputError(f"event time: field {name!r} is a bool, not a time")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise OperatorInputError(f"event time: field {name!r} is {value!r}, not a time")
        return _in_range(seconds, value, name)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise OperatorInputError(
                f"event time: field {name!r} is {value!r}, not an ISO-8601 time"
            ) from None
    else:
        raise OperatorInputError(
            f"event time: field {name!r} is a {type(value).__name__}, not a time"
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _in_range(parsed.timestamp(), value, name)


def _in_range(seconds: float, value: Any, name: str) -> float:
    if _EARLIEST <= seconds <= _LATEST:
        return seconds
    # a window of it could never be given to a callback (no datetime holds its bounds):
    # refused here, it is dead-lettered instead of stopping the partition at every restart
    raise OperatorInputError(
        f"event time: field {name!r} is {value!r}, outside the years 2 to 9998"
        + (" (epoch milliseconds, perhaps?)" if isinstance(value, int | float) else "")
    )


def seconds(value: timedelta | float | int, name: str, *, positive: bool = True) -> float:
    """A duration option as seconds.

    Raises:
        ConfigError: not a duration, negative, or zero where ``positive``.
    """
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigError(f"{name} must be a timedelta, not {type(value).__name__}")
    if not math.isfinite(result) or result < 0 or (positive and result == 0):
        raise ConfigError(f"{name} must be {'positive' if positive else 'at least 0'}")
    return result


def as_datetime(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)
