"""Aggregations of a window: ``Count``, ``Sum``, ``Min``, ``Max``, ``Mean``,
``CountDistinct``, ``TopK``, ``Last`` and ``Reduce``.

An aggregation is pure and its accumulator is JSON (it is stored in the window's state):
``extract`` reads what it needs from one event's data (raising
:class:`~.operator.OperatorInputError` for a missing or ill-typed field, which
dead-letters the event before any window changes), ``add`` folds that into an
accumulator, ``merge`` joins two accumulators (session windows merge when an event
bridges them), ``result`` is the value the callback sees in ``WindowResult.values``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ConfigError
from .operator import OperatorInputError


class Aggregation(ABC):
    """One aggregation of a window (see the module docstring)."""

    mergeable = True
    """Whether :meth:`merge` works (session windows need it)."""

    total = False
    """True if :meth:`add` and :meth:`merge` never raise and never change the
    accumulators they are given (they return new ones): the window operator then folds
    events into a key's live state directly, instead of into a copy kept only once every
    step succeeded."""

    @abstractmethod
    def extract(self, data: Any) -> Any:
        """What this aggregation takes from one event's data (JSON).

        Raises:
            OperatorInputError: a missing or ill-typed field.
        """

    @abstractmethod
    def initial(self) -> Any:
        """The accumulator of an empty window."""

    @abstractmethod
    def add(self, acc: Any, value: Any, time: float) -> Any:
        """``acc`` with one event's extracted ``value`` (event time ``time``) folded in."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Two windows' accumulators as one."""

    @abstractmethod
    def result(self, acc: Any) -> Any:
        """The value the callback sees."""


def _field(data: Any, name: str) -> Any:
    if not isinstance(data, dict) or name not in data:
        raise OperatorInputError(f"the data has no field {name!r}")
    return data[name]


def _number(data: Any, name: str) -> int | float:
    value = _field(data, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OperatorInputError(f"field {name!r} is {value!r}, not a number")
    return value


def _hashable(data: Any, name: str) -> Any:
    value = _field(data, name)
    if isinstance(value, dict | list):
        raise OperatorInputError(f"field {name!r} is a {type(value).__name__}, not a value")
    return value


_INT_RANGE = (-(2**63), 2**64 - 1)
"""The integers the state's JSON (orjson) can hold."""


def _storable(value: Any) -> Any:
    """``value``, refused if it is an integer the stored state could not hold.

    Raises:
        OperatorInputError: an integer sum grew past 64 bits.
    """
    if type(value) is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise OperatorInputError(f"the sum {value} no longer fits in 64 bits")
    return value


def _check_field(field: Any, what: str) -> None:
    if not isinstance(field, str) or not field:
        raise ConfigError(f"{what} needs the name of a data field")


@dataclass(frozen=True, slots=True)
class Count(Aggregation):
    """The number of events in the window."""

    total = True

    def extract(self, data: Any) -> Any:
        return None

    def initial(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return acc + 1

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def result(self, acc: Any) -> Any:
        return acc


@dataclass(frozen=True, slots=True)
class Sum(Aggregation):
    """The sum of a numeric data field."""

    field: str

    def __post_init__(self) -> None:
        _check_field(self.field, "Sum")

    def extract(self, data: Any) -> Any:
        return _number(data, self.field)

    def initial(self) -> Any:
        return 0

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return _storable(acc + value)

    def merge(self, a: Any, b: Any) -> Any:
        return _storable(a + b)

    def result(self, acc: Any) -> Any:
        return acc


@dataclass(frozen=True, slots=True)
class Min(Aggregation):
    """The smallest value of a numeric data field (None for no event)."""

    field: str

    total = True

    def __post_init__(self) -> None:
        _check_field(self.field, "Min")

    def extract(self, data: Any) -> Any:
        return _number(data, self.field)

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return value if acc is None or value < acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else min(a, b)

    def result(self, acc: Any) -> Any:
        return acc


@dataclass(frozen=True, slots=True)
class Max(Aggregation):
    """The largest value of a numeric data field (None for no event)."""

    field: str

    total = True

    def __post_init__(self) -> None:
        _check_field(self.field, "Max")

    def extract(self, data: Any) -> Any:
        return _number(data, self.field)

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return value if acc is None or value > acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else max(a, b)

    def result(self, acc: Any) -> Any:
        return acc


@dataclass(frozen=True, slots=True)
class Mean(Aggregation):
    """The arithmetic mean of a numeric data field (None for no event)."""

    field: str

    def __post_init__(self) -> None:
        _check_field(self.field, "Mean")

    def extract(self, data: Any) -> Any:
        return _number(data, self.field)

    def initial(self) -> Any:
        return [0, 0]

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return [_storable(acc[0] + value), acc[1] + 1]

    def merge(self, a: Any, b: Any) -> Any:
        return [_storable(a[0] + b[0]), a[1] + b[1]]

    def result(self, acc: Any) -> Any:
        return acc[0] / acc[1] if acc[1] else None


def _token(value: Any) -> str:
    """A JSON value as a dict key that keeps its type (1 and "1" are distinct)."""
    return orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class CountDistinct(Aggregation):
    """The number of distinct values of a data field (exact: the values are kept)."""

    field: str

    total = True

    def __post_init__(self) -> None:
        _check_field(self.field, "CountDistinct")

    def extract(self, data: Any) -> Any:
        return _token(_hashable(data, self.field))

    def initial(self) -> Any:
        return []

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return acc if value in acc else sorted([*acc, value])

    def merge(self, a: Any, b: Any) -> Any:
        return sorted(set(a) | set(b))

    def result(self, acc: Any) -> Any:
        return len(acc)


@dataclass(frozen=True, slots=True)
class TopK(Aggregation):
    """The ``k`` most frequent values of a data field, as ``[value, count]`` pairs, most
    frequent first (ties: the smaller value first)."""

    field: str
    k: int

    total = True

    def __post_init__(self) -> None:
        _check_field(self.field, "TopK")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("TopK needs k >= 1")

    def extract(self, data: Any) -> Any:
        return _token(_hashable(data, self.field))

    def initial(self) -> Any:
        return {}

    def add(self, acc: Any, value: Any, time: float) -> Any:
        counts = dict(acc)
        counts[value] = counts.get(value, 0) + 1
        return counts

    def merge(self, a: Any, b: Any) -> Any:
        counts = dict(a)
        for value, n in b.items():
            counts[value] = counts.get(value, 0) + n
        return counts

    def result(self, acc: Any) -> Any:
        ranked = sorted(acc.items(), key=lambda item: (-item[1], item[0]))[: self.k]
        return [[orjson.loads(value), n] for value, n in ranked]


@dataclass(frozen=True, slots=True)
class Last(Aggregation):
    """The value of a data field in the event with the newest event time (of several
    at the same time, the last to arrive); None for no event."""

    field: str

    total = True

    def __post_init__(self) -> None:
        _check_field(self.field, "Last")

    def extract(self, data: Any) -> Any:
        return _field(data, self.field)

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, value: Any, time: float) -> Any:
        return [time, value] if acc is None or time >= acc[0] else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else (b if b[0] >= a[0] else a)

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[1]


@dataclass(frozen=True, slots=True)
class Reduce(Aggregation):
    """Anything else: ``fn(acc, value)`` folds each event into ``initial``.

    ``value`` is the data field ``field``, or the event's whole data (JSON) without one.
    The accumulator must stay JSON (it is stored). Not mergeable, so not for session
    windows. An ``fn`` that raises dead-letters the event with the reason.
    """

    initial_value: Any
    fn: Callable[[Any, Any], Any]
    field: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError("Reduce needs a function fn(acc, value)")
        try:
            orjson.dumps(self.initial_value)
        except TypeError as error:
            raise ConfigError(f"Reduce's initial value is not JSON: {error}") from error

    mergeable = False

    def extract(self, data: Any) -> Any:
        return data if self.field is None else _field(data, self.field)

    def initial(self) -> Any:
        return orjson.loads(orjson.dumps(self.initial_value))  # a fresh copy each window

    def add(self, acc: Any, value: Any, time: float) -> Any:
        try:
            result = self.fn(acc, value)
            return orjson.loads(orjson.dumps(result))
        except Exception as error:
            raise OperatorInputError(f"Reduce's function failed: {error!r}") from error

    def merge(self, a: Any, b: Any) -> Any:
        raise ConfigError("Reduce cannot merge windows")

    def result(self, acc: Any) -> Any:
        return acc
