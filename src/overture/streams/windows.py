"""Windows: ``Tumbling``, ``Hopping``, ``Sliding``, ``Session``, and the window operator.

All windows are in event time, half-open ``[start, end)`` and aligned to the epoch
(tumbling and hopping). A window *closes* once the partition's watermark (the newest
event time seen minus ``grace``; see ``streams/operator.py``) reaches its end: with
``emit="on_close"`` its result goes to the callback then, once; with
``emit="every_update"`` each event that changes it sends its current result, and the
window is dropped silently when it closes. An event whose every window is already
closed is *late*: it changes nothing, is counted, and goes to ``on_late``.

- ``Tumbling(size)``: ``[k·size, (k+1)·size)``, one window per event.
- ``Hopping(size, every)``: ``[k·every, k·every + size)``, ``size/every`` windows per event.
- ``Sliding(size)``: one window per event, ending at it: ``(t - size, t]`` over the
  key's events (the events of the ``size`` before each event; a window closes when the
  watermark reaches its event's time). Its events are kept for ``size`` after the
  watermark passes them, since a later event's window may reach back to them.
- ``Session(gap)``: events closer than ``gap`` to each other are one session,
  ``[first, last + gap)``; an event that bridges two sessions merges them (their
  aggregations merge, so every aggregation but ``Reduce`` works with sessions).

A key's state is its open windows (and, for ``Sliding``, its recent events); once none
is left the key's entry is deleted, so state stays bounded by the open windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Literal

import orjson

from ..errors import ConfigError
from ..events import Event
from .aggregates import Aggregation
from .operator import Operator, OperatorInputError, Output, Step
from .time import as_datetime, seconds

_FORMAT = 1
"""The version of a key's stored window state."""

_START = itemgetter(0)
"""A window's start, what a key's open windows are sorted by."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What a window callback gets: the key, the window's bounds and its values."""

    key: str
    start: datetime
    end: datetime
    """Exclusive (for ``Sliding``, inclusive: the window is ``(start, end]``)."""
    values: dict[str, Any]
    """Each aggregation's result, by the name given in ``aggregate=``."""


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size``, aligned to the epoch."""

    size: timedelta

    def __post_init__(self) -> None:
        seconds(self.size, "Tumbling size")


@dataclass(frozen=True, slots=True)
class Hopping:
    """Windows of ``size`` starting ``every`` (overlapping when ``every < size``)."""

    size: timedelta
    every: timedelta

    def __post_init__(self) -> None:
        size, every = seconds(self.size, "Hopping size"), seconds(self.every, "Hopping every")
        if every > size:
            raise ConfigError("Hopping every must not exceed size (events would fall between)")


@dataclass(frozen=True, slots=True)
class Sliding:
    """A window per event: the key's events of the ``size`` up to and including it."""

    size: timedelta

    def __post_init__(self) -> None:
        seconds(self.size, "Sliding size")


@dataclass(frozen=True, slots=True)
class Session:
    """Sessions of events closer than ``gap`` to each other."""

    gap: timedelta

    def __post_init__(self) -> None:
        seconds(self.gap, "Session gap")


WindowSpec = Tumbling | Hopping | Sliding | Session
Emit = Literal["on_close", "every_update"]
KeyFn = Callable[[Any], Any] | str


def key_function(key: KeyFn) -> Callable[[Event], str]:
    """The operator key of an event from ``key=``: a data field's name, or a callable
    given the (typed) event. The key is text; a missing, None or ill-typed key raises
    :class:`OperatorInputError`."""
    if isinstance(key, str):
        if not key:
            raise ConfigError("key= must name a data field, or be a callable")
        name = key

        def of_field(event: Event) -> str:
            data = event.envelope.data
            if not isinstance(data, dict) or data.get(name) is None:
                raise OperatorInputError(f"key: the data has no field {name!r}")
            return _key_text(data[name], f"field {name!r}")

        return of_field
    if not callable(key):
        raise ConfigError("key= must name a data field, or be a callable")

    def of_callable(event: Event) -> str:
        try:
            value = key(event)
        except Exception as error:
            raise OperatorInputError(f"key function failed: {error!r}") from error
        if value is None:
            raise OperatorInputError("key function returned None")
        return _key_text(value, "the key function's result")

    return of_callable


def _key_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise OperatorInputError(f"key: {what} is {value!r}, not text or an integer")
    return str(value)


class WindowOperator(Operator):
    """A window with its aggregations, driven by the streams runtime (pure).

    State of a key (JSON): ``{"v": 1, "w": [[start, end, [acc...], updates], ...]}``
    (open windows by start), plus ``"e": [[time, [input...]], ...]`` (its recent events)
    for ``Sliding``. Its live form (``load``) is that document decoded, folded into in
    place when every aggregation is ``total`` (else into a copy, kept once every ``add``
    succeeded), and encoded again only when the runtime seals a batch that changed it.
    """

    def __init__(
        self,
        *,
        name: str,
        sources: tuple[str, ...],
        key: KeyFn,
        window: WindowSpec,
        aggregate: Mapping[str, Aggregation],
        grace: float,
        idle: float | None,
        time_field: str | None,
        emit: Emit,
    ) -> None:
        if not isinstance(window, Tumbling | Hopping | Sliding | Session):
            raise ConfigError(
                f"window= must be ov.Tumbling, ov.Hopping, ov.Sliding or ov.Session, not {window!r}"
            )
        if not aggregate or not isinstance(aggregate, Mapping):
            raise ConfigError("aggregate= needs at least one named aggregation")
        for label, agg in aggregate.items():
            if not isinstance(label, str) or not isinstance(agg, Aggregation):
                raise ConfigError(f"aggregate={{{label!r}: {agg!r}}} is not an aggregation")
            if isinstance(window, Session) and not agg.mergeable:
                raise ConfigError(f"aggregation {label!r} cannot merge, so not with Session")
        if emit not in ("on_close", "every_update"):
            raise ConfigError(f'emit= must be "on_close" or "every_update", not {emit!r}')
        self.name = name
        self.sources = sources
        self.grace = grace
        self.idle = idle
        self.time_field = time_field
        self.window = window
        self.emit = emit
        self._key = key_function(key)
        self._names = list(aggregate)
        self._aggs = list(aggregate.values())
        # Sliding windows compute their aggregations when a window is emitted: they always
        # work on a copy (see on_event)
        self._in_place = not isinstance(window, Sliding) and all(agg.total for agg in self._aggs)
        if isinstance(window, Tumbling):
            self._size = self._every = seconds(window.size, "size")
        elif isinstance(window, Hopping):
            self._size, self._every = seconds(window.size, "size"), seconds(window.every, "every")
        elif isinstance(window, Sliding):
            self._size = self._every = seconds(window.size, "size")
        else:
            self._size = self._every = seconds(window.gap, "gap")

    # -- Operator --------------------------------------------------------------------

    def key_of(self, event: Event) -> str:
        return self._key(event)

    def load(self, stored: bytes) -> dict[str, Any]:
        return self._load(stored)

    def dump(self, state: Any) -> bytes:
        return orjson.dumps(state)

    def on_event(
        self, state: Any | None, key: str, event: Event, time: float, watermark: float
    ) -> Step:
        data = event.envelope.data
        inputs = [agg.extract(data) for agg in self._aggs]  # may raise: nothing changed yet
        if state is None:
            doc = self._load(None)
        elif self._in_place:
            doc = state  # nothing below raises: the live state itself
        else:
            # an aggregation that may change its accumulator, or a sliding window (whose
            # results are computed as it goes): a copy, kept only if all went well
            doc = orjson.loads(orjson.dumps(state))
        outputs = self._close(doc, key, watermark)
        if isinstance(self.window, Sliding):
            late, changed = self._slide(doc, time, inputs, watermark)
        elif isinstance(self.window, Session):
            late, changed = self._sessionize(doc, time, inputs, watermark)
        else:
            late, changed = self._assign(doc, time, inputs, watermark)
        if self.emit == "every_update":
            for window in changed:
                window[3] += 1
                outputs.append(self._output(key, doc, window, f":{window[3]}"))
        return Step(self._live(doc), tuple(outputs), late)

    def on_watermark(self, state: Any, key: str, watermark: float) -> Step:
        doc = state
        outputs = self._close(doc, key, watermark)
        return Step(self._live(doc), tuple(outputs))

    def wake_at(self, state: Any) -> float | None:
        return self._wake(state)

    def describe(self, key: str, state: Any) -> list[Any]:
        doc = state
        return [
            {
                "key": key,
                "start": as_datetime(w[0]).isoformat(),
                "end": as_datetime(w[1]).isoformat(),
                "values": self._values(doc, w),
            }
            for w in doc["w"]
        ]

    # -- windows -----------------------------------------------------------------------

    def _assign(
        self, doc: dict[str, Any], time: float, inputs: list[Any], watermark: float
    ) -> tuple[bool, list[list[Any]]]:
        """Tumbling and hopping: add the event to each of its windows still open.

        Folded in place: ``doc`` is the live state only when no ``add`` can raise (see
        ``on_event``), else a copy that is dropped if one does."""
        size, every = self._size, self._every
        windows: list[list[Any]] = doc["w"]
        changed: list[list[Any]] = []
        added = False
        index = math.floor((time - size) / every) + 1  # the first start > time - size
        while (start := index * every) <= time:  # multiples, not sums: no float drift
            index += 1
            end = start + size
            if end <= watermark or not start <= time < end:
                continue
            for window in windows:  # a few open windows: a scan beats building a dict
                if window[0] == start:
                    break
            else:
                window = [start, end, [agg.initial() for agg in self._aggs], 0]
                windows.append(window)
                added = True
            window[2] = self._folded(window, inputs, time)
            changed.append(window)
        if added:
            windows.sort(key=_START)
        return not changed, changed

    def _sessionize(
        self, doc: dict[str, Any], time: float, inputs: list[Any], watermark: float
    ) -> tuple[bool, list[list[Any]]]:
        """Sessions: the event's own ``[t, t + gap)``, merged with every open session it
        overlaps."""
        gap = self._size
        windows: list[list[Any]] = doc["w"]
        touching = [w for w in windows if time < w[1] and time + gap > w[0]]
        if not touching and time + gap <= watermark:
            return True, []
        merged: list[Any] = [time, time + gap, [agg.initial() for agg in self._aggs], 0]
        for w in touching:
            merged[0] = min(merged[0], w[0])
            merged[1] = max(merged[1], w[1])
            merged[2] = [
                agg.merge(a, b) for agg, a, b in zip(self._aggs, merged[2], w[2], strict=True)
            ]
            merged[3] += w[3]
        merged[2] = self._folded(merged, inputs, time)
        # every accumulator made (a merge or add may raise): only now is the state changed
        for w in touching:
            windows.remove(w)
        windows.append(merged)
        windows.sort(key=_START)
        return False, [merged]

    def _slide(
        self, doc: dict[str, Any], time: float, inputs: list[Any], watermark: float
    ) -> tuple[bool, list[list[Any]]]:
        """Sliding: the event's own window ``(t - size, t]`` if still open, and the event
        kept for every open window that reaches back to it."""
        size = self._size
        windows: list[list[Any]] = doc["w"]
        containing = [w for w in windows if w[1] - size < time <= w[1]]
        own = time > watermark
        if not own and not containing:
            return True, []
        doc["e"].append([time, inputs])
        doc["e"].sort(key=lambda e: e[0])
        if own and not any(w[1] == time for w in windows):
            windows.append([time - size, time, None, 0])
            windows.sort(key=_START)
            containing.append(next(w for w in windows if w[1] == time))
        return False, containing

    def _close(self, doc: dict[str, Any], key: str, watermark: float) -> list[Output]:
        """Remove the windows whose end the watermark reached, with their results (for
        ``on_close``), oldest end first; prune a sliding window's old events."""
        windows: list[list[Any]] = doc["w"]
        closing = [w for w in windows if w[1] <= watermark]
        outputs = []
        if closing:
            closing.sort(key=lambda w: (w[1], w[0]))
            if self.emit == "on_close":
                outputs = [self._output(key, doc, w, "") for w in closing]
            doc["w"] = [w for w in windows if w[1] > watermark]
        if "e" in doc:
            # an event is needed while an open window, or one a future event can open
            # (ending after the watermark), reaches back to it
            horizon = min([w[1] for w in doc["w"]] + [watermark]) - self._size
            doc["e"] = [e for e in doc["e"] if e[0] > horizon]
        return outputs

    def _wake(self, doc: dict[str, Any]) -> float | None:
        ends = [w[1] for w in doc["w"]]
        if doc.get("e"):
            ends.append(doc["e"][0][0] + self._size)  # when its oldest event can go
        return min(ends) if ends else None

    def _folded(self, window: list[Any], inputs: list[Any], time: float) -> list[Any]:
        """The window's accumulators with the event folded in (new ones: a window's own
        are left as they are)."""
        return [
            agg.add(acc, v, time) for agg, acc, v in zip(self._aggs, window[2], inputs, strict=True)
        ]

    def _values(self, doc: dict[str, Any], window: list[Any]) -> dict[str, Any]:
        accs = window[2]
        if accs is None:  # sliding: computed from the events it covers
            accs = [agg.initial() for agg in self._aggs]
            for time, inputs in doc["e"]:
                if window[0] < time <= window[1]:
                    accs = [
                        agg.add(a, v, time)
                        for agg, a, v in zip(self._aggs, accs, inputs, strict=True)
                    ]
        return {n: agg.result(a) for n, agg, a in zip(self._names, self._aggs, accs, strict=True)}

    def _output(self, key: str, doc: dict[str, Any], window: list[Any], suffix: str) -> Output:
        start, end = window[0], window[1]
        result = WindowResult(key, as_datetime(start), as_datetime(end), self._values(doc, window))
        return Output(f"{start!r}:{end!r}{suffix}", result)

    # -- state ------------------------------------------------------------------------

    def _load(self, state: bytes | None) -> dict[str, Any]:
        if state is None:
            doc: dict[str, Any] = {"v": _FORMAT, "w": []}
        else:
            doc = orjson.loads(state)
            if doc.get("v") != _FORMAT:
                raise ConfigError(f"window state of format {doc.get('v')!r} is not known")
        if isinstance(self.window, Sliding):
            doc.setdefault("e", [])
        return doc

    def _live(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """The key's state after a step: None once nothing is open (the entry goes)."""
        if not doc["w"] and not doc.get("e"):
            return None
        return doc
