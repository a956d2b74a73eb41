"""The contract between a stream operator and the streams runtime.

An *operator* (a window with its aggregations, an event pattern) is pure: no I/O, no
clock, no asyncio. The runtime (``streams/runtime.py``) owns everything else: reading
records, decoding and validating events, extracting event time, keeping the per-partition
watermark, storing each key's state in keyed state (``runtime/keyed.py``, namespace
``"stream:" + operator.name``), the wake-up index, calling the user's callback with
retries, emitting its events, dead letters and late-event counts. All of it commits with
the batch that consumed the input, in one transaction.

What the runtime does with one event of a type in :attr:`Operator.sources`:

1. ``key = operator.key_of(event)``: the operator key (text). If the key is not the
   record's partition key the runtime re-keys the event to the partition owning ``key``
   first, so all of a key's state lives on one partition. :class:`OperatorInputError`
   (or any exception) dead-letters the event at once, with the reason.
2. ``t = event time`` (the CloudEvents ``time`` attribute, or the data field named
   :attr:`Operator.time_field`: ISO-8601 text or epoch seconds); no usable time → dead
   letter. Times are float epoch seconds everywhere in this contract.
3. The partition's watermark for this operator is raised to ``max(watermark, t - grace)``
   (it never goes back) *before* the operator sees the event, so ``watermark`` below
   already includes it. ``grace`` is folded into the watermark: an operator compares
   event times and window ends with ``watermark`` directly.
4. ``step = operator.on_event(state, key, event, t, watermark)`` where ``state`` is the
   key's state (its live form, below; ``None``: nothing stored). The runtime stores ``step.state``
   (``None`` deletes the key's entry: the state is bounded because an operator returns
   ``None`` once nothing can change any more), calls the callback once per output in
   ``step.outputs``, in order, and counts the event as late if ``step.late`` (it then
   also goes to the operator's ``on_late`` callback). An :class:`OperatorInputError`
   raised here (an ill-typed field, say) dead-letters the event, and the key's state is
   left as it was.
5. ``operator.wake_at(step.state)`` is the earliest watermark at which the key needs
   :meth:`Operator.on_watermark` (its first window's end, a pattern's deadline), or
   ``None``. The runtime keeps these in an index (rebuilt at start by scanning the
   operator's namespace), so it never scans every key.

When a partition's watermark rises (by an event of any key, or with the engine clock on
an idle partition: ``watermark = max(event-time watermark, now - idle - grace)``), the
runtime calls ``on_watermark(state, key, watermark)`` for every key of that partition
whose ``wake_at <= watermark``, stores the new state and emits the outputs as above.
That is how windows close and absence patterns fire when no further event arrives.

Outputs: an :class:`Output` carries the value handed to the user's callback (a
``WindowResult``, a ``Match``) and an ``identity``: text unique among all outputs this
operator can ever make for this key (a window's bounds, a match's first event id, plus an
update number for ``emit="every_update"``). The runtime derives each emitted event's id
from (operator name, key, identity, index in the callback's list), so a batch redone after
a crash emits the same ids, which the log's dedup makes exactly once.

State bytes are the operator's own format (the runtime never looks inside): make it
versioned so a later release can read it. Operators must be deterministic: the same
state, event and watermark give the same step.

Live state: the runtime keeps each key's state in memory in the operator's *live* form,
``operator.load(stored bytes)``, hands that form to ``on_event``, ``on_watermark``,
``wake_at`` and ``describe``, and turns it back into bytes with ``operator.dump`` only
when the batch is sealed, once per key the batch changed (not once per event). The
default live form is the bytes themselves (``load`` and ``dump`` return what they are
given). An operator with a richer live form (the window operator's decoded document) may
change the object it is given in place and return it as ``step.state``; if ``on_event``
raises, the object must be left as it was (the event is dead-lettered, nothing changed).

Registering: the app keeps one :class:`StreamDef` per operator (``App.add_stream``,
``App.streams``); ``@app.window`` and ``@app.pattern`` build them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EventError
from ..events import Event
from ..policies import DEFAULT_RETRY, Retry


class OperatorInputError(EventError):
    """An event an operator cannot use: a missing or ill-typed key or field. The runtime
    dead-letters the event with this message as the reason; nothing else changes."""


@dataclass(frozen=True, slots=True)
class Output:
    """One result of an operator, for the user's callback."""

    identity: str
    """Unique among everything this operator can emit for the key (see module docstring)."""
    value: Any
    """What the callback is called with (``WindowResult``, ``Match``)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What an operator made of an event or a watermark for one key."""

    state: Any | None
    """The key's new state in its live form (see the module docstring: bytes unless the
    operator's ``load`` says otherwise); ``None`` deletes it (nothing can change it any
    more)."""
    outputs: tuple[Output, ...] = ()
    """Results, in the order the callback is to see them."""
    late: bool = False
    """The event was too late for anything it could belong to, and was dropped: the
    runtime counts it and hands it to ``on_late``. (Only from ``on_event``.)"""


class Operator(ABC):
    """A pure stream operator (see the module docstring for how it is driven).

    Attributes:
        name: unique among the app's operators; names its keyed-state namespace, its
            emitted events' ids, ``client.window(name, key)`` and the CLI.
        sources: the event types it reads.
        grace: seconds of event-time lateness accepted (subtracted in the watermark).
        idle: seconds of engine-clock silence after which an idle partition's watermark
            follows the clock (``now - idle - grace``); ``None`` never.
        time_field: the data field holding event time, or ``None`` for CloudEvents
            ``time``.
    """

    name: str
    sources: tuple[str, ...]
    grace: float
    idle: float | None
    time_field: str | None

    def load(self, stored: bytes) -> Any:
        """The live form of a key's stored state (default: the bytes themselves)."""
        return stored

    def dump(self, state: Any) -> bytes:
        """The bytes stored for a key's live state (default: the live form is bytes)."""
        if type(state) is not bytes:
            raise TypeError(f"{type(self).__name__} state is bytes, not {type(state).__name__}")
        return state

    @abstractmethod
    def key_of(self, event: Event) -> str:
        """The operator key of ``event``.

        Raises:
            OperatorInputError: the key is missing or not usable.
        """

    @abstractmethod
    def on_event(
        self, state: Any | None, key: str, event: Event, time: float, watermark: float
    ) -> Step:
        """Fold one event of ``key`` (event time ``time``) into the key's state.

        Raises:
            OperatorInputError: a field the operator needs is missing or ill-typed.
        """

    @abstractmethod
    def on_watermark(self, state: Any, key: str, watermark: float) -> Step:
        """React to the watermark reaching ``wake_at(state)`` with no event of the key:
        close what ends at or before ``watermark``, fire what times out."""

    @abstractmethod
    def wake_at(self, state: Any) -> float | None:
        """The watermark at which :meth:`on_watermark` must be called, or None."""

    @abstractmethod
    def describe(self, key: str, state: Any) -> list[Any]:
        """What is open for the key now (``client.window``: the open windows' results),
        as JSON-ready values."""


Callback = Callable[[Any], "Event | Sequence[Event] | None"]
"""A user callback: an operator output's value in; an event, a list of events or None
out. Sync or async (``async def``) are both accepted."""

LateCallback = Callable[[Event], Any]
"""Called with each late event (its return value is ignored); retried like the callback."""


@dataclass(frozen=True, slots=True)
class StreamDef:
    """A registered operator: the pure operator plus the user code the runtime calls."""

    operator: Operator
    callback: Callback
    on_late: LateCallback | None = None
    retry: Retry = DEFAULT_RETRY
    """How a raising callback (or ``on_late``) is retried before its input is
    dead-lettered (the handlers' default)."""

    @property
    def name(self) -> str:
        return self.operator.name
