"""Routing: what each consumed record does.

A record is decoded and then, in this order: dead-lettered if it cannot be used
(undecodable, invalid type or data, a control event whose data does not match its model,
a key function that fails); carried out if it is a control event (cancel, DLQ replay, the
wait messages between partitions); forwarded to its own partition if it is keyed for one
this engine does not own (re-keying); otherwise it starts the instances it triggers,
schedules its handlers, resolves the waits on its (type, key), and is buffered for the
other running instances with its key. Nothing here raises on bad input: a record that
raised would stop its partition on the same record at every restart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .. import protocol
from ..app import App, ProcessDef
from ..codec import Codec
from ..core import machine as m
from ..errors import EventError, MalformedEvent
from ..events import Envelope
from ..ports import NewRecord, Record, Store
from .deadletters import DeadLetters, record_of
from .decoding import Decoder
from .instances import Instances
from .observer import NO_OBSERVER, Observer
from .remote import RemoteWaits
from .staging import Stage
from .tasks import Tasks
from .waits import Waits
from .work import Work

log = logging.getLogger("overture.engine")


class Router:
    """Routes records into the batch being staged (see the module docstring).

    Args:
        app: the application (triggers, handlers, event contracts).
        decoder: decodes the records (once per batch, shared with the stream operators).
        store: what prefetching reads (which triggers already started an instance).
        partitions: how many partitions the log has.
        instances, work, waits, remote, dead_letters, tasks: the objects records feed.
        stats: the engine's counters (``rekeyed``).
        observer: told of each record routed, when it ``traces``.
    """

    def __init__(
        self,
        app: App,
        decoder: Decoder,
        store: Store,
        partitions: int,
        instances: Instances,
        work: Work,
        waits: Waits,
        remote: RemoteWaits,
        dead_letters: DeadLetters,
        tasks: Tasks,
        stats: dict[str, int],
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self._app = app
        self._decoder = decoder
        self._codec = decoder.codec
        self._store = store
        self._partitions = partitions
        self._instances = instances
        self._work = work
        self._waits = waits
        self._remote = remote
        self._dead_letters = dead_letters
        self._tasks = tasks
        self._stats = stats
        self._observer = observer
        # The stock codec accepts any data for a type without a contract in this app, so
        # a generic event that starts nothing needs no typed form. A codec that makes
        # typed events its own way (a schema registry, an upcaster: see codec.py) or knows
        # other contracts may refuse one: it sees every event, and a refusal is
        # dead-lettered here, before any wait, handler or window gets the event.
        codec = self._codec
        self._generic_accepted = (
            type(codec).event is Codec.event
            and type(codec).typed is Codec.typed
            and codec.app is app
        )

    def route_all(self, stage: Stage, records: Sequence[Record], now: float) -> None:
        """Route the records of one partition, in offset order."""
        envelopes = self._decoder.envelopes(stage, records)
        self._prefetch(stage, envelopes)
        observer = self._observer
        if not observer.traces:
            for record, envelope in zip(records, envelopes, strict=True):
                self.route(stage, record, now, envelope)
            return
        for record, envelope in zip(records, envelopes, strict=True):
            if isinstance(envelope, Envelope):
                observer.record_routing(envelope, record.partition, record.offset)
                try:
                    self.route(stage, record, now, envelope)
                finally:
                    observer.record_routed()
            else:
                self.route(stage, record, now, envelope)

    def _prefetch(self, stage: Stage, envelopes: list[Envelope | MalformedEvent]) -> None:
        """Read in bulk what routing these records will need from the store: which of
        their triggers already started an instance (a re-delivery), and the state of the
        evicted instances they will feed (waiters, and the callers of the tasks whose
        results they are), instead of a few queries per record."""
        wanted: set[str] = set()
        for envelope in envelopes:
            if isinstance(envelope, Envelope):
                for definition in self._app.triggers(envelope.type):
                    ids = m.trigger_instance_ids(definition.name, envelope)
                    stage.trigger_ids[(definition.name, envelope.source, envelope.id)] = ids
                for wait in self._waits.match(envelope.type, envelope.partitionkey):
                    wanted.add(wait.instance_id)
                if envelope.type in _TASK_RESULTS and isinstance(envelope.data, dict):
                    instance_id = envelope.data.get("instance_id")  # validated when routed
                    if isinstance(instance_id, str):
                        wanted.add(instance_id)
        candidates = self._instances.not_cached(
            [i for ids in stage.trigger_ids.values() for i in ids]
        )
        if candidates:
            stage.existing |= self._store.existing(candidates)
        self._instances.read_ahead(stage, wanted)

    def route(
        self,
        stage: Stage,
        record: Record,
        now: float,
        decoded: Envelope | MalformedEvent | None = None,
    ) -> None:
        """Route one record (``decoded``: its envelope, if already decoded)."""
        envelope = self._decoder.envelope_of(record) if decoded is None else decoded
        position = f"{record.partition}:{record.offset}"
        if isinstance(envelope, MalformedEvent):
            self._dead_letters.add(stage, position, "decode", str(envelope), None, record, now)
            return
        if envelope.type == protocol.STREAM_REKEYED:
            return  # the streams runtime's own (streams/runtime.py)
        if protocol.is_reserved(envelope.type):
            self._control(stage, envelope, record, now)
            return
        key = envelope.partitionkey
        if self._remote.foreign(key):
            # keyed for another partition (a producer keyed or partitioned it differently):
            # forward it there, atomically with this batch's offsets
            stage.batch.appends.append(
                NewRecord(key, record.value, None, envelope.type, internal=True, wire=record.wire)
            )
            self._stats["rekeyed"] += 1
            return
        triggers = self._app.triggers(envelope.type)
        contract = self._app.event_class(envelope.type)
        if triggers or contract is not None or not self._generic_accepted:
            started = self._start(stage, record, envelope, triggers, position, now)
            if started is None:
                return  # dead-lettered
        else:
            started = set()  # a generic event (any data is valid) that starts nothing
        for handler in self._app.handlers(envelope.type):
            self._work.schedule_handler(stage, handler, envelope, record.value, now)
        self._correlate(stage, envelope, record, now, started)

    def _start(
        self,
        stage: Stage,
        record: Record,
        envelope: Envelope,
        triggers: Sequence[ProcessDef],
        position: str,
        now: float,
    ) -> set[str] | None:
        """Validate the event and start the instances its triggers call for: their ids,
        or None if the event was dead-lettered (invalid, or a key that failed)."""
        # Types with a registered contract are validated here (invalid → dead letter);
        # other types become generic events, whose data may be any JSON. An event that
        # starts one process is decoded from a private copy of its data: that decoded
        # event becomes the instance's own, saving the instance a second decode.
        sole = len(triggers) == 1
        try:
            event = self._codec.event(m.private_copy(envelope) if sole else envelope)
        except EventError as error:
            self._dead_letters.add(stage, position, "validate", str(error), envelope, record, now)
            return None
        # Every key first (user code that may fail), so that an event is either routed
        # whole or dead-lettered whole, never half-applied.
        keys = []
        for definition in triggers:
            try:
                keys.append((definition, definition.key_of(event)))
            except Exception as error:
                reason = f"key of process {definition.name!r} failed: {error!r}"
                self._dead_letters.add(stage, position, "route", reason, envelope, record, now)
                return None
        return {
            self._instances.start(
                stage,
                definition,
                key,
                envelope,
                record.partition % self._partitions,
                now,
                event if sole and type(event) is definition.spec.event_class else None,
            )
            for definition, key in keys
        }

    def _correlate(
        self, stage: Stage, envelope: Envelope, record: Record, now: float, started: set[str]
    ) -> None:
        """Feed every instance waiting on (type, key); buffer the event for the other
        running instances with that key (they may be about to wait for it)."""
        instances = self._instances
        fed = set(started)
        value: dict[str, Any] | None = None
        for wait in self._waits.match(envelope.type, envelope.partitionkey):
            if wait.home is not None:  # for an instance of another partition
                self._remote.forward(stage, wait, envelope)
                continue
            iid = wait.instance_id
            live = instances.live(stage, iid, now, stuck=True)
            if live is not None and live.machine.stuck_reason is not None:
                # parked: keep both the wait and the event for when the code is fixed
                if iid not in fed:
                    fed.add(iid)
                    instances.buffer(stage, iid, envelope, record.value, _position(record), now)
                continue
            self._waits.clear(stage, wait)
            if live is not None:
                fed.add(iid)
                # shared by the waiters' journal entries; each waiter's code gets a copy
                value = value or self._codec.to_journal(envelope)
                instances.resolve_wait(stage, live, wait, value, now)
        if envelope.partitionkey is None:
            return  # keyless events are never buffered: they would reach every keyless instance
        for iid in instances.active(envelope.partitionkey):
            if iid not in fed and not envelope.source.endswith("/" + iid):  # not its emitter
                instances.buffer(stage, iid, envelope, record.value, _position(record), now)

    def _control(self, stage: Stage, envelope: Envelope, record: Record, now: float) -> None:
        """Carry out a control event; one that is not valid is dead-lettered, like any
        other input that cannot be used (raising here would stop the partition on the
        same record at every restart)."""
        try:
            message = protocol.parse_control(envelope.type, envelope.data)
            deliveries = self._remote.receive(stage, message, envelope)
        except EventError as error:
            position = f"{record.partition}:{record.offset}"
            self._dead_letters.add(stage, position, "route", str(error), envelope, record, now)
            return
        if deliveries is not None:
            for wait, event in deliveries:
                self._instances.deliver(stage, wait, event, now)
        elif isinstance(message, protocol.Cancel):
            if self._instances.cancel(stage, message.instance_id, now):
                self._tasks.withdraw(stage, message.instance_id, now)
            else:
                # Dropping it would leave its sender believing the instance cancelled.
                reason = (
                    f"cancel: no instance {message.instance_id!r} on partition "
                    f"{record.partition}; a cancel must be keyed with the instance's key "
                    "(its partitionkey), as Client.cancel does, to reach the partition that "
                    "holds it"
                )
                position = f"{record.partition}:{record.offset}"
                self._dead_letters.add(stage, position, "route", reason, envelope, record, now)
        elif isinstance(message, protocol.DlqReplay):
            self._replay_dead_letter(stage, message.id, now)
        elif isinstance(message, protocol.DlqDelete):
            # all of them in this batch: one commit (one Kafka transaction) deletes them
            for dl_id in dict.fromkeys(message.ids):
                if self._dead_letters.take(stage, dl_id) is None:
                    log.warning("dlq delete: no dead letter %s (deleted or replayed)", dl_id)
                else:
                    log.info("dlq delete: %s deleted (reason: %s)", dl_id, message.reason)
        elif isinstance(message, protocol.TaskCompletion | protocol.TaskFailure):
            lost = self._tasks.result(stage, message, now)
            if lost is not None:  # dropping it would hide a worker's routing mistake
                position = f"{record.partition}:{record.offset}"
                self._dead_letters.add(stage, position, "route", lost, envelope, record, now)
        elif isinstance(message, protocol.TaskRequest):
            # a request belongs on a task queue (Batch.tasks), where workers claim it;
            # on the log nobody would ever run it
            reason = (
                f"{protocol.TASK_REQUESTED!r} is the engine's message to workers, published "
                "on a task queue; on the log it runs nothing"
            )
            position = f"{record.partition}:{record.offset}"
            self._dead_letters.add(stage, position, "route", reason, envelope, record, now)

    def _replay_dead_letter(self, stage: Stage, dl_id: str, now: float) -> None:
        letter = self._dead_letters.take(stage, dl_id)
        if letter is None:
            log.warning("dlq replay: no dead letter %s", dl_id)
            return
        if not letter.source.startswith("handler:"):
            self.route(stage, record_of(letter, now), now)
            return
        handler = self._app.handler(letter.source.removeprefix("handler:"))
        if handler is None:
            self._dead_letters.add(
                stage,
                dl_id,
                letter.source,
                "handler is not registered",
                None,
                None,
                now,
                payload=letter.value,
                attempts=letter.attempts,
            )
            return
        self._work.replay_handler(stage, dl_id, handler, letter.value, now)


_TASK_RESULTS = frozenset({protocol.TASK_COMPLETED, protocol.TASK_FAILED})


def _position(record: Record) -> str:
    return f"{record.partition:05d}:{record.offset:012d}"
