"""Event patterns: ``ov.begin(...)``, the ``Match`` a callback gets, and the pattern operator.

A pattern is a sequence of stages over the events of one key::

    ov.begin(CheckoutStarted).not_followed_by(PaymentSucceeded).within(timedelta(hours=1))
    ov.begin(Price).followed_by(Price, where=lambda e, m: moved(m["price"][0], e)).within(...)

Semantics (docs/streams.md "Patterns"):

- **Order**: events are matched in arrival order, but a stage only accepts an event whose
  event time is not before the previous stage's event; an event older than the watermark
  (beyond ``grace``) is late and dropped. Arrival order was chosen over buffering until
  the watermark passes: results come at once (no ``grace`` of delay on every match) and
  the state holds only partial matches, not a reorder buffer.
- **Contiguity**: skip-till-next-match: events in between that fit no stage are ignored.
- **Consumption**: an event is used by at most one partial match (the oldest that
  accepts it); if none does and it fits the first stage, it begins a new one. After a
  match its events are gone: no two matches share an event. With ``skip_past_last()``
  every other partial match of the key is dropped too (they all began before the match's
  last event), so one burst matches once.
- **within**: the whole match, from its first event's time. A partial match that can no
  longer complete (the watermark passed ``first + within``) is dropped.
- **Absence** (``not_followed_by``, last stage, needs ``within``): the match completes
  when the watermark reaches ``first + within`` and no event of that type (and where)
  with an event time in ``[previous stage's time, first + within)`` arrived. It fires by
  time passing (the watermark, which on an idle partition follows the engine clock).
- **where**: ``where(event)`` or ``where(event, match_so_far)``.

State per key: the partial matches as deterministic JSON (``{"v": 1, "p": [...]}``); the
key's entry is deleted once no partial match is left.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from ..errors import ConfigError
from ..events import Envelope, Event
from .operator import Operator, OperatorInputError, Output, Step
from .time import as_datetime, seconds
from .windows import KeyFn, key_function

_FORMAT = 1
"""The version of a key's stored pattern state."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a pattern."""

    type: type[Event] | str
    where: Callable[..., Any] | None = None
    name: str | None = None
    absent: bool = False

    @property
    def type_name(self) -> str:
        if isinstance(self.type, str):
            return self.type
        if not (isinstance(self.type, type) and issubclass(self.type, Event)):
            raise ConfigError(f"{self.type!r} is not an Event class or a type name")
        if not self.type.event_type:
            raise ConfigError(f"{self.type!r} has no type=")
        return self.type.event_type

    @property
    def label(self) -> str:
        """The name ``match[...]`` finds this stage's events by."""
        return self.name or self.type_name


@dataclass(frozen=True, slots=True)
class Pattern:
    """A sequence of stages; build it with :func:`begin`. Immutable: each method returns
    a new pattern."""

    stages: tuple[Stage, ...]
    within_s: float | None = None
    skip_past_last_event: bool = False

    def followed_by(
        self,
        type: type[Event] | str,
        *,
        where: Callable[..., Any] | None = None,
        name: str | None = None,
    ) -> Pattern:
        """Then an event of ``type`` (skip-till-next-match: others in between are ignored)."""
        self._open()
        return replace(self, stages=(*self.stages, _stage(type, where, name, absent=False)))

    def not_followed_by(
        self,
        type: type[Event] | str,
        *,
        where: Callable[..., Any] | None = None,
        name: str | None = None,
    ) -> Pattern:
        """Then *no* event of ``type`` until ``first + within``: must be the last stage."""
        self._open()
        if self.skip_past_last_event:
            raise ConfigError(
                "skip_past_last is for patterns completed by an event, not not_followed_by"
            )
        return replace(self, stages=(*self.stages, _stage(type, where, name, absent=True)))

    def times(self, n: int) -> Pattern:
        """The last stage ``n`` times in all (``match[label]`` lists all ``n`` events)."""
        self._open()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError("times(n) needs an integer n >= 1")
        last = self.stages[-1]
        return replace(self, stages=(*self.stages, *([last] * (n - 1))))

    def within(self, duration: timedelta) -> Pattern:
        """The whole match must fit in ``duration`` from its first event."""
        return replace(self, within_s=seconds(duration, "within"))

    def skip_past_last(self) -> Pattern:
        """After a match, drop every other partial match of the key (they all began
        before the match's last event), so a burst of events that fits the pattern many
        times over matches once: the next match begins after this one (Flink's
        ``SKIP_PAST_LAST_EVENT``). For patterns that end with ``followed_by``."""
        if self.stages[-1].absent:
            raise ConfigError(
                "skip_past_last is for patterns completed by an event, not not_followed_by"
            )
        return replace(self, skip_past_last_event=True)

    def _open(self) -> None:
        if self.stages and self.stages[-1].absent:
            raise ConfigError("not_followed_by must be the last stage of a pattern")


def begin(
    type: type[Event] | str, *, where: Callable[..., Any] | None = None, name: str | None = None
) -> Pattern:
    """Start a pattern with an event of ``type`` (an Event class or a type name)."""
    return Pattern((_stage(type, where, name, absent=False),))


def _stage(
    type: type[Event] | str, where: Callable[..., Any] | None, name: str | None, *, absent: bool
) -> Stage:
    if where is not None and not callable(where):
        raise ConfigError("where= must be a callable")
    stage = Stage(type, where, name, absent)
    stage.type_name  # noqa: B018 - validates the type now, not at the first event
    return stage


@dataclass(frozen=True, slots=True)
class Match:
    """What a pattern callback gets: the matched events by stage, the key, the bounds."""

    key: str
    events: dict[str, list[Event]] = field(default_factory=dict)
    """The events of each stage, by stage name (``name=``) or type name."""
    start: datetime | None = None
    """The first event's time."""
    end: datetime | None = None
    """The last event's time, or for an absence pattern the deadline that passed."""

    def __getitem__(self, stage: str) -> list[Event]:
        return self.events.get(stage, [])


class PatternOperator(Operator):
    """The pure operator of a pattern (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        pattern: Pattern,
        key: KeyFn,
        grace: float,
        idle: float | None,
        time_field: str | None,
        classes: dict[str, type[Event]],
    ) -> None:
        if not isinstance(pattern, Pattern):
            raise ConfigError("@app.pattern needs a pattern built with ov.begin(...)")
        if pattern.stages[-1].absent:
            if len(pattern.stages) < 2:
                raise ConfigError("a pattern cannot begin with not_followed_by")
            if pattern.within_s is None:
                raise ConfigError("not_followed_by needs within(...): how long to wait")
        self.name = name
        self.pattern = pattern
        self.stages = pattern.stages
        self.sources = tuple(dict.fromkeys(s.type_name for s in pattern.stages))
        self.grace = grace
        self.idle = idle
        self.time_field = time_field
        self._key = key_function(key)
        self._classes = classes
        self._arity = [_arity(s.where) for s in pattern.stages]

    def key_of(self, event: Event) -> str:
        return self._key(event)

    # -- the matcher --------------------------------------------------------------------

    def on_event(
        self, state: bytes | None, key: str, event: Event, time: float, watermark: float
    ) -> Step:
        partials = self._load(state)
        if time < watermark:
            return Step(state, late=True)
        etype = event.envelope.type
        record = {"t": time, "e": event.envelope.to_dict()}
        outputs: list[Output] = []
        kept: list[dict[str, Any]] = []
        used = False
        for partial in partials:
            stage = self.stages[len(partial["ev"])]
            last = partial["ev"][-1]["t"]
            if stage.absent:
                deadline = partial["ev"][0]["t"] + (self.pattern.within_s or 0.0)
                if (
                    etype == stage.type_name
                    and last <= time < deadline
                    and self._where(len(partial["ev"]), event, key, partial)
                ):
                    continue  # the awaited absence did not happen: no match
                kept.append(partial)
                continue
            if (
                not used
                and etype == stage.type_name
                and time >= last
                and self._in_window(partial, time)
                and self._where(len(partial["ev"]), event, key, partial)
            ):
                used = True
                partial = {"ev": [*partial["ev"], record]}
                if len(partial["ev"]) == len(self.stages):
                    outputs.append(self._output(key, partial, time))
                    continue
            kept.append(partial)
        if outputs and self.pattern.skip_past_last_event:
            kept = []  # each began before this event, the match's last
        if not used and etype == self.stages[0].type_name and self._where(0, event, key, None):
            partial = {"ev": [record]}
            if len(self.stages) == 1:
                outputs.append(self._output(key, partial, time))
            else:
                kept.append(partial)
        kept, fired = self._expire(kept, key, watermark)
        return Step(self._dump(kept), tuple(outputs + fired))

    def on_watermark(self, state: bytes, key: str, watermark: float) -> Step:
        kept, fired = self._expire(self._load(state), key, watermark)
        return Step(self._dump(kept), tuple(fired))

    def wake_at(self, state: bytes) -> float | None:
        partials = self._load(state)
        if not partials or self.pattern.within_s is None:
            return None
        return float(min(p["ev"][0]["t"] for p in partials)) + self.pattern.within_s

    def describe(self, key: str, state: bytes) -> list[Any]:
        return [
            {
                "key": key,
                "stage": len(p["ev"]),
                "start": as_datetime(p["ev"][0]["t"]).isoformat(),
                "events": [r["e"]["id"] for r in p["ev"]],
            }
            for p in self._load(state)
        ]

    def _expire(
        self, partials: list[dict[str, Any]], key: str, watermark: float
    ) -> tuple[list[dict[str, Any]], list[Output]]:
        within = self.pattern.within_s
        if within is None:
            return partials, []
        kept: list[dict[str, Any]] = []
        fired: list[Output] = []
        for partial in partials:
            deadline = partial["ev"][0]["t"] + within
            if watermark < deadline:
                kept.append(partial)
            elif self.stages[len(partial["ev"])].absent:
                fired.append(self._output(key, partial, deadline))
            # else: it can no longer complete: dropped
        return kept, fired

    def _in_window(self, partial: dict[str, Any], time: float) -> bool:
        within = self.pattern.within_s
        return within is None or time < partial["ev"][0]["t"] + within

    def _where(self, index: int, event: Event, key: str, partial: dict[str, Any] | None) -> bool:
        where = self.stages[index].where
        if where is None:
            return True
        try:
            if self._arity[index] >= 2:
                so_far = self._match(key, partial or {"ev": []}, None)
                return bool(where(event, so_far))
            return bool(where(event))
        except OperatorInputError:
            raise
        except Exception as error:
            raise OperatorInputError(
                f"pattern {self.name!r}: where of stage {index} failed: {error!r}"
            ) from error

    def _match(self, key: str, partial: dict[str, Any], end: float | None) -> Match:
        events: dict[str, list[Event]] = {}
        for stage, record in zip(self.stages, partial["ev"], strict=False):
            events.setdefault(stage.label, []).append(self._event(record["e"]))
        times = [r["t"] for r in partial["ev"]]
        return Match(
            key=key,
            events=events,
            start=as_datetime(times[0]) if times else None,
            end=as_datetime(end if end is not None else times[-1]) if times else None,
        )

    def _output(self, key: str, partial: dict[str, Any], end: float) -> Output:
        return Output(f"m:{partial['ev'][0]['e']['id']}", self._match(key, partial, end))

    def _event(self, raw: dict[str, Any]) -> Event:
        envelope = Envelope.from_dict(raw)
        cls = self._classes.get(envelope.type, Event)
        return cls.from_envelope(envelope)

    def _load(self, state: bytes | None) -> list[dict[str, Any]]:
        if state is None:
            return []
        doc = orjson.loads(state)
        if doc.get("v") != _FORMAT:
            raise ValueError(f"pattern state format {doc.get('v')!r} is not known")
        partials: list[dict[str, Any]] = doc["p"]
        return partials

    def _dump(self, partials: list[dict[str, Any]]) -> bytes | None:
        if not partials:
            return None
        return orjson.dumps({"v": _FORMAT, "p": partials}, option=orjson.OPT_SORT_KEYS)


def _arity(where: Callable[..., Any] | None) -> int:
    if where is None:
        return 0
    try:
        params = inspect.signature(where).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
