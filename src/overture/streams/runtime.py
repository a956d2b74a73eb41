"""The streams runtime: every stream operator of an app, as one participant of the
engine's partition loop (``runtime/loop.py``).

For each consumed record of a type some operator reads, and for each such operator:
the event is decoded, keyed (``Operator.key_of``), re-keyed to the partition owning its
operator key if it is not on it (as the router re-keys for processes: an
``overture.stream.rekeyed`` record on the log, which only this participant reads), given
its event time, and folded into the key's state (``Operator.on_event``); the partition's
watermark rises first. Then every key of the partition whose ``wake_at`` the watermark
reached gets ``on_watermark`` (windows close, absence patterns fire). Outputs go to the
user's callback; the events it returns are appended to the batch with ids derived from
(app, operator, key, output identity, position), so a batch redone after a crash writes
the same events. Everything (states, watermarks, late counts, appended events, dead
letters) is staged in the batch that consumed the input and commits with its offsets.

Keyed state, namespace ``stream:<operator>``:

- ``k:<partition>:<key>``: the operator's state of a key (its bytes, as it made them);
- ``w:<partition>``: the partition's watermark (JSON number), so a restart never reopens
  a closed window;
- ``l:<partition>``: how many late events the partition had (JSON number).

All of an operator's states are read once at start (the wake-up index is built from
them) and then kept in memory in the operator's live form (``Operator.load``: the window
operator's decoded document), changed in place event after event; when a batch is
sealed each key it changed is encoded once (``Operator.dump``) and staged, so the states
commit with the batch's offsets however many events of the key the batch held. A
restarted engine reads them again (on Kafka, restored from the changelog on assignment).

Records are decoded once per batch for every participant (``runtime/decoding.py``): the
router and this runtime share each record's envelope.

Idle partitions: an operator with ``idle`` set also moves the partition's watermark with
the engine clock, ``max(event watermark, now - idle - grace)``, at the moment that closes
something (so an idle engine commits nothing until a window is due). ``next_due`` tells
the engine when that will be.

Callbacks (and ``on_late``) run inside the batch: a sync function, or an ``async def``
that finishes without waiting for anything (one that awaits I/O fails with a clear
reason). One that raises is tried again, up to its ``Retry.max_attempts`` (at once: the
batch does not sleep through a backoff; ``non_retryable`` and ``TerminalError`` fail at
once), then the result (or the late event) is dead-lettered with the reason, under the
id ``stream:<operator>:<key>:<identity>``. The partition never stops for bad input.
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson

from .. import protocol
from ..core.values import describe_error, to_json
from ..errors import EventError, MalformedEvent
from ..events import Envelope, Event
from ..ports import NewRecord, Record, StateView, partition_for
from ..runtime.deadletters import DeadLetters
from ..runtime.decoding import Decoder
from ..runtime.staging import Stage
from .operator import OperatorInputError, Output, Step, StreamDef
from .time import event_time

log = logging.getLogger("overture.streams")

_EMIT_NAMESPACE = uuid.UUID("a3d1c1e2-5b8e-4f4e-9c71-6e0c2b9f7d31")
NAMESPACE_PREFIX = "stream:"


def namespace(operator: str) -> str:
    """The keyed-state namespace of an operator."""
    return NAMESPACE_PREFIX + operator


def state_key(partition: int, key: str) -> bytes:
    return b"k:%05d:" % partition + key.encode()


def watermark_key(partition: int) -> bytes:
    return b"w:%05d" % partition


def late_key(partition: int) -> bytes:
    return b"l:%05d" % partition


class _Partition:
    """One operator's runtime state on one partition: its keys' states (live form), the
    keys the batch changed, watermark, late count, wake-ups."""

    __slots__ = ("changed", "dirty", "heap", "late", "number", "states", "wakes", "watermark")

    def __init__(self, number: int) -> None:
        self.number = number
        self.states: dict[str, Any] = {}
        self.changed: set[str] = set()  # staged when the batch is sealed
        self.watermark = float("-inf")
        self.late = 0
        self.heap: list[tuple[float, str]] = []
        self.wakes: dict[str, float] = {}
        self.dirty = False

    def set_wake(self, key: str, at: float | None) -> None:
        if at is None:
            self.wakes.pop(key, None)
            return
        if self.wakes.get(key) == at:
            return
        self.wakes[key] = at
        heapq.heappush(self.heap, (at, key))

    def next_wake(self) -> float | None:
        heap, wakes = self.heap, self.wakes
        while heap and wakes.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the key's wake-up moved or it is gone
        return heap[0][0] if heap else None

    def due(self, watermark: float) -> list[str]:
        keys = []
        while (at := self.next_wake()) is not None and at <= watermark:
            _, key = heapq.heappop(self.heap)
            del self.wakes[key]
            keys.append(key)
        return keys


class Streams:
    """The app's stream operators as one loop participant (see the module docstring).

    Args:
        app_name: the app's name (part of every emitted event's id and source).
        streams: the registered operators.
        decoder: decodes records (once per batch, shared with the router); its codec
            makes typed events and encodes emitted events.
        keyed: keyed state through the batches not committed yet (its store is read at
            start).
        partitions: how many partitions the log has (re-keying).
        owned: the partitions this engine consumes.
        dead_letters: where unusable input goes.
        stats: the engine's counters (``stream_rekeyed``, ``stream_late``,
            ``stream_results``).
    """

    def __init__(
        self,
        app_name: str,
        streams: Sequence[StreamDef],
        decoder: Decoder,
        store: StateView,
        partitions: int,
        owned: Sequence[int],
        dead_letters: DeadLetters,
        stats: dict[str, int],
    ) -> None:
        self._app = app_name
        self._defs = {d.name: d for d in streams}
        self._decoder = decoder
        self._codec = decoder.codec
        self._store = store
        self._partitions = partitions
        # on Kafka the internal topic's partition p is the logical partition
        # ``partitions + p``: a key's state belongs to the partition p either way
        self._owned = sorted({p % partitions for p in owned})
        self._dead_letters = dead_letters
        self._stats = stats
        for name in ("stream_rekeyed", "stream_late", "stream_results"):
            stats.setdefault(name, 0)
        self._by_type: dict[str, list[StreamDef]] = {}
        for d in streams:
            for source in d.operator.sources:
                self._by_type.setdefault(source, []).append(d)
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._emit_time: tuple[float, datetime] | None = None

    # -- start -------------------------------------------------------------------------

    def load(self) -> None:
        """Read every operator's committed state of the owned partitions: watermarks,
        late counts, key states, and the wake-up index built from them."""
        for name, definition in self._defs.items():
            ns, operator = namespace(name), definition.operator
            for partition in self._owned:
                part = self._parts[(name, partition)] = _Partition(partition)
                raw = self._store.get(ns, watermark_key(partition))
                mark = None if raw is None else orjson.loads(raw)
                if isinstance(mark, int | float):
                    part.watermark = float(mark)
                raw = self._store.get(ns, late_key(partition))
                if raw is not None:
                    part.late = int(orjson.loads(raw))
                prefix = b"k:%05d:" % partition
                for entry, value in self._store.scan(ns, prefix):
                    key = entry[len(prefix) :].decode()
                    state = part.states[key] = operator.load(value)
                    part.set_wake(key, operator.wake_at(state))

    # -- Participant -------------------------------------------------------------------

    def begin(self, stage: Stage, now: float) -> None:
        pass

    def consume(self, stage: Stage, records: Sequence[Record], now: float) -> None:
        by_type = self._by_type
        touched: set[str] = set()
        partition = records[0].partition % self._partitions if records else 0
        envelopes = self._decoder.envelopes(stage, records)
        for record, envelope in zip(records, envelopes, strict=True):
            if isinstance(envelope, MalformedEvent):
                continue  # dead-lettered by the router
            if envelope.type == protocol.STREAM_REKEYED:
                self._rekeyed(stage, record, envelope, now, touched)
                continue
            definitions = by_type.get(envelope.type)
            if not definitions:
                continue
            try:
                event = self._codec.event(envelope)
            except EventError:
                continue  # invalid for its contract: dead-lettered by the router
            for definition in definitions:
                self._event(stage, definition, record, envelope, event, now, touched)
        for name in touched:
            self._fire(stage, self._defs[name], self._parts[(name, partition)], now)

    def advance(self, stage: Stage, now: float) -> bool:
        did = False
        for name, definition in self._defs.items():
            operator = definition.operator
            if operator.idle is None:
                continue
            clock_mark = now - operator.idle - operator.grace
            for partition in self._owned:
                part = self._parts[(name, partition)]
                at = part.next_wake()
                # the very expression next_due() waits for: no float rounding may leave
                # the engine woken for a window this then declines to close
                if at is None or now < at + operator.idle + operator.grace:
                    continue
                part.watermark = max(part.watermark, clock_mark, at)
                part.dirty = True
                self._fire(stage, definition, part, now)
                did = True
        return did

    def seal(self, stage: Stage, now: float) -> None:
        for (name, partition), part in self._parts.items():
            # each key this batch changed, encoded once however many of its events it held
            if part.changed:
                ns, dump, states = namespace(name), self._defs[name].operator.dump, part.states
                for key in part.changed:
                    state = states.get(key)
                    if state is None:
                        stage.delete_state(ns, state_key(partition, key))
                    else:
                        stage.put_state(ns, state_key(partition, key), dump(state))
                part.changed.clear()
            if not part.dirty:
                continue
            part.dirty = False
            ns = namespace(name)
            stage.put_state(ns, watermark_key(partition), orjson.dumps(part.watermark))
            stage.put_state(ns, late_key(partition), orjson.dumps(part.late))

    def settled(self, keep: Collection[str]) -> None:
        pass

    def next_due(self) -> float | None:
        """The engine-clock time at which an idle partition's watermark will close
        something (None: nothing is waiting on the clock)."""
        due: float | None = None
        for (name, _), part in self._parts.items():
            operator = self._defs[name].operator
            if operator.idle is None:
                continue
            at = part.next_wake()
            if at is not None:
                when = at + operator.idle + operator.grace
                due = when if due is None else min(due, when)
        return due

    # -- one event ---------------------------------------------------------------------

    def _event(
        self,
        stage: Stage,
        definition: StreamDef,
        record: Record,
        envelope: Envelope,
        event: Event,
        now: float,
        touched: set[str],
    ) -> None:
        operator = definition.operator
        name = definition.name
        try:
            key = operator.key_of(event)
        except Exception as error:
            dl_id = f"stream:{name}:{record.partition}:{record.offset}"
            self._unusable(stage, dl_id, name, error, envelope, record, now)
            return
        partitions = self._partitions
        partition = record.partition % partitions
        if partitions > 1 and partition_for(key, partitions, partition) != partition:
            # keyed otherwise in the log: the key's state lives on the partition of its
            # operator key, so the event goes there, atomically with this batch's offsets
            forwarded = Envelope(
                protocol.STREAM_REKEYED,
                {"operator": name, "key": key, "event": envelope.to_dict()},
                f"{envelope.id}:rekeyed:{name}",
                envelope.source,
                partitionkey=key,
            )
            stage.batch.appends.append(
                NewRecord(key, self._codec.to_bytes(forwarded), None, forwarded.type, internal=True)
            )
            self._stats["stream_rekeyed"] += 1
            return
        part = self._parts[(name, partition)]
        self._fold(stage, definition, part, record, envelope, event, key, now, touched)

    def _rekeyed(
        self, stage: Stage, record: Record, envelope: Envelope, now: float, touched: set[str]
    ) -> None:
        data = envelope.data if isinstance(envelope.data, dict) else {}
        definition = self._defs.get(data.get("operator", ""))
        dl_id = f"stream:rekeyed:{record.partition}:{record.offset}"
        if definition is None:
            reason = f"re-keyed for stream operator {data.get('operator')!r}, not in this app"
            self._dead_letters.add(stage, dl_id, "stream", reason, envelope, record, now)
            return
        try:
            inner = self._codec.from_dict(data["event"])
            event = self._codec.event(inner)
            key = data["key"]
            if not isinstance(key, str):
                raise MalformedEvent("the re-keyed event's key is not text")
        except (KeyError, EventError) as error:
            reason = f"re-keyed event unusable: {error!r}"
            self._dead_letters.add(stage, dl_id, "stream", reason, envelope, record, now)
            return
        part = self._parts[(definition.name, record.partition % self._partitions)]
        self._fold(stage, definition, part, record, inner, event, key, now, touched)

    def _fold(
        self,
        stage: Stage,
        definition: StreamDef,
        part: _Partition,
        record: Record,
        envelope: Envelope,
        event: Event,
        key: str,
        now: float,
        touched: set[str],
    ) -> None:
        operator, name, partition = definition.operator, definition.name, part.number
        try:
            time = event_time(event, operator.time_field)
        except OperatorInputError as error:
            dl_id = f"stream:{name}:{partition}:{record.offset}"
            self._unusable(stage, dl_id, name, error, envelope, record, now)
            return
        watermark = max(part.watermark, time - operator.grace)
        state = part.states.get(key)
        try:
            step = operator.on_event(state, key, event, time, watermark)
        except Exception as error:
            dl_id = f"stream:{name}:{partition}:{record.offset}"
            self._unusable(stage, dl_id, name, error, envelope, record, now)
            return
        if watermark != part.watermark:
            part.watermark = watermark
            part.dirty = True
            touched.add(name)
        self._apply(stage, definition, part, key, step, now)
        if step.late:
            part.late += 1
            part.dirty = True
            self._stats["stream_late"] += 1
            if definition.on_late is not None:
                late_id = f"stream:{name}:late:{partition}:{record.offset}"
                self._late(stage, definition, late_id, event, envelope, record, now)

    def _unusable(
        self,
        stage: Stage,
        dl_id: str,
        name: str,
        error: Exception,
        envelope: Envelope,
        record: Record,
        now: float,
    ) -> None:
        reason = str(error) if isinstance(error, OperatorInputError) else repr(error)
        reason = f"stream {name!r}: {reason}"
        self._dead_letters.add(stage, dl_id, f"stream:{name}", reason, envelope, record, now)

    # -- state and outputs -------------------------------------------------------------

    def _fire(self, stage: Stage, definition: StreamDef, part: _Partition, now: float) -> None:
        """``on_watermark`` for every key of the partition the watermark reached."""
        operator = definition.operator
        for key in part.due(part.watermark):
            state = part.states.get(key)
            if state is None:
                continue
            step = operator.on_watermark(state, key, part.watermark)
            self._apply(stage, definition, part, key, step, now)

    def _apply(
        self,
        stage: Stage,
        definition: StreamDef,
        part: _Partition,
        key: str,
        step: Step,
        now: float,
    ) -> None:
        states = part.states
        old = states.get(key)
        state = step.state
        # the same object: changed in place (the window operator's live document);
        # another one: changed if it differs (a pattern's bytes)
        if state is old is not None or state != old:
            if state is None:
                del states[key]
            else:
                states[key] = state
            part.changed.add(key)
        part.set_wake(key, None if state is None else definition.operator.wake_at(state))
        for output in step.outputs:
            self._output(stage, definition, part.number, key, output, now)

    def _output(
        self, stage: Stage, definition: StreamDef, partition: int, key: str, out: Output, now: float
    ) -> None:
        name = definition.name
        self._stats["stream_results"] += 1
        dl_id = f"stream:{name}:{key}:{out.identity}"
        ok, value, attempts = _attempt(definition, out.value)
        if ok:
            try:
                events = _events(value)
            except TypeError as error:
                ok, value = False, error
        if not ok:
            described = describe_error(value)
            reason = f"stream {name!r} callback: {described['type']}: {described['message']}"
            payload = orjson.dumps(_jsonable(out.value), default=str)
            self._dead_letters.add(
                stage, dl_id, f"stream:{name}", reason, None, None, now,
                payload=payload, attempts=attempts,
            )  # fmt: skip
            return
        seed = f"{self._app}:{name}:{key}:{out.identity}"
        envelopes = [self._envelope(e, seed, i, key, name, now) for i, e in enumerate(events)]
        stage.batch.appends.extend(self._codec.records(envelopes))

    def _late(
        self,
        stage: Stage,
        definition: StreamDef,
        dl_id: str,
        event: Event,
        envelope: Envelope,
        record: Record,
        now: float,
    ) -> None:
        assert definition.on_late is not None
        ok, value, attempts = _attempt(definition, event, definition.on_late)
        if not ok:
            described = describe_error(value)
            reason = f"stream {definition.name!r} on_late: {described['type']}: "
            reason += str(described["message"])
            self._dead_letters.add(
                stage, dl_id, f"stream:{definition.name}", reason, envelope, record, now,
                attempts=attempts,
            )  # fmt: skip

    def _envelope(
        self, event: Event, seed: str, index: int, key: str, name: str, now: float
    ) -> Envelope:
        base = event.envelope
        emitted = self._emit_time
        if emitted is None or emitted[0] != now:  # one datetime per batch, not per event
            emitted = self._emit_time = (now, datetime.fromtimestamp(now, UTC))
        return Envelope(
            type=base.type,
            data=to_json(base.data),
            id=derived_id(f"{seed}:{index}"),
            source=f"/{self._app}/stream/{name}",
            subject=base.subject,
            time=emitted[1],
            dataschema=base.dataschema,
            partitionkey=base.partitionkey or key,
            traceparent=base.traceparent,
            tenant=base.tenant,
        )

    # -- queries -----------------------------------------------------------------------

    def late_count(self, name: str) -> int:
        return sum(p.late for (n, _), p in self._parts.items() if n == name)


_EMIT_PREFIX = _EMIT_NAMESPACE.bytes


def derived_id(name: str) -> str:
    """``str(uuid.uuid5(_EMIT_NAMESPACE, name))``, the id of an emitted event, without
    building ``UUID`` objects (a third of the cost of emitting a window's result)."""
    digest = bytearray(hashlib.sha1(_EMIT_PREFIX + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _attempt(
    definition: StreamDef, argument: Any, fn: Callable[[Any], Any] | None = None
) -> tuple[bool, Any, int]:
    """Call the callback (or ``fn``) with ``argument``, tried again per the definition's
    retry policy: ``(ok, value or error, attempts made)``."""
    call = definition.callback if fn is None else fn
    retry = definition.retry
    attempt = 0
    while True:
        attempt += 1
        try:
            return True, _run(call, argument), attempt
        except Exception as error:
            if not retry.retryable(error, attempt):
                return False, error, attempt


def _run(fn: Callable[[Any], Any], argument: Any) -> Any:
    result = fn(argument)
    if not inspect.iscoroutine(result):
        return result
    try:
        result.send(None)
    except StopIteration as done:
        return done.value
    result.close()
    raise RuntimeError(
        "a stream callback runs inside the engine's batch and must not wait for I/O "
        "(it awaited something); return events and let a process or handler do the I/O"
    )


def _events(value: Any) -> list[Event]:
    if value is None:
        return []
    if isinstance(value, Event):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, Event) for v in value):
        return list(value)
    raise TypeError(f"a stream callback returns an Event, a list of them or None, not {value!r}")


def _jsonable(value: Any) -> Any:
    try:
        return asdict(value)
    except TypeError:
        return value
