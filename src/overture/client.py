"""The Python client: send events, and inspect and operate instances, from any process."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from . import protocol
from .app import App
from .backends import DEFAULT_URL, open_backend, renamed_broker
from .backends.embedded import missing_letters
from .codec import Codec
from .core import journal as jr
from .errors import ConfigError, MalformedEvent, NotFound
from .events import Envelope, Event
from .groupcommit import GroupCommitter
from .handles import Started, started_by
from .observe import tracehooks
from .ports import ActivityRow, Backend, DeadLetter, InstanceQuery, NewRecord
from .protocol import FINAL as FINAL
from .protocol import Status
from .results import Results
from .retention import DELETED, deleted_message, find_deleted
from .streams.query import view as stream_view

MIN_SHORT_ID = 6
"""The shortest prefix or suffix :meth:`Client.instance` accepts for an instance id."""
ALL = 10**12
"""A listing limit that means "every row"."""


@dataclass(frozen=True, slots=True)
class Instance:
    """A process instance as the client sees it."""

    id: str
    process: str
    version: int
    key: str | None
    status: Status
    """A :class:`~overture.Status`, which is also its stored string (``"completed"``)."""
    created: datetime
    updated: datetime
    trigger_id: str
    result: Any
    error: Any


@dataclass(frozen=True, slots=True)
class InstancePage:
    """One page of :meth:`Client.find_instances`."""

    instances: list[Instance]
    """Newest first."""
    cursor: str | None
    """Pass it as ``cursor`` for the next (older) page; ``None`` on the last page."""


@dataclass(frozen=True, slots=True)
class DeadLettersDeleted:
    """What :meth:`Client.delete_dead_letters` did."""

    ids: list[str]
    """The dead letters deleted (or, where ``requests`` is not empty, to be deleted)."""
    requests: list[str]
    """The ids of the ``overture.dlq.delete`` events sent to the engines that own the
    letters (Kafka: one per partition, each applied in one engine transaction); empty
    where the letters are already deleted (SQLite, memory: one transaction)."""

    @property
    def done(self) -> bool:
        """Whether the letters are deleted already (not merely requested)."""
        return not self.requests


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event read back from the log, with its position."""

    partition: int
    offset: int
    envelope: Envelope | None
    raw: bytes
    error: str | None = None


_dlq_log = logging.getLogger("overture.dlq")


class Client:
    """Send events and query instances. Synchronous; safe to use next to a running engine
    in another process, and from several threads: their concurrent sends are committed
    together (one transaction for all sends waiting at that moment), each acknowledged
    once committed.

    Args:
        backend: a backend URL (``sqlite:///path.db``, ``memory://``) or an open backend.
        app: optional; when given, events of types it defines are validated before sending.
        codec: turns events into the bytes sent and read back (default: ``Codec(app)``;
            see ``overture.codec``); engines reading them need the same.
    """

    def __init__(
        self,
        backend: str | Backend = DEFAULT_URL,
        *,
        app: App | None = None,
        codec: Codec | None = None,
        broker: str | Backend | None = None,
    ) -> None:
        backend = renamed_broker("Client", backend, DEFAULT_URL, broker)
        self._owns = isinstance(backend, str)
        self.backend: Backend = open_backend(backend) if isinstance(backend, str) else backend
        self.app = app
        self.codec = Codec(app) if codec is None else codec
        self._sends = GroupCommitter(self.backend.log)
        self._results = Results(self.backend)

    @property
    def broker(self) -> Backend:
        """Deprecated: the old name of :attr:`backend`."""
        warnings.warn("Client.broker is now Client.backend", DeprecationWarning, stacklevel=2)
        return self.backend

    def close(self) -> None:
        self._sends.close()
        self._results.close()
        if self._owns:  # (a memory:// backend's close keeps its data: others share it)
            self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        reserved: bool = False,
        **attributes: Any,
    ) -> str:
        """Publish one event; returns its id.

        ``event`` is an :class:`Event` instance, or a type name with ``data``. ``key`` sets
        the partition/correlation key; other keyword arguments set CloudEvents attributes
        (``id``, ``source``, ``subject``, ``tenant``, …). Re-sending an event with an id
        that is already in the log is a no-op.

        Args:
            reserved: allow a control event type (the ``overture.`` namespace, see
                :mod:`overture.protocol`); its data is validated against its model.

        Raises:
            EventValidationError: the data violates the type's registered contract, or
                the type is reserved and ``reserved`` is not set.
            MalformedEvent: the type is not a valid CloudEvents type.
        """
        envelope = self.envelope(event, data, key=key, reserved=reserved, **attributes)
        return self.send_many([envelope], reserved=reserved)[0]

    def start(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        process: str | None = None,
        key: str | None = None,
        **attributes: Any,
    ) -> Started:
        """Send an event that starts instances; returns a handle naming them, whose
        ``result(timeout=)`` waits until the instance has finished (woken by the commit
        that finishes it). Arguments as :meth:`send`; ``process`` names the process when
        the client has no app (otherwise every process of the app the event triggers).

        Raises:
            ConfigError: neither an app nor ``process`` says what the event starts.
        """
        envelope = self.envelope(event, data, key=key, **attributes)
        ids = started_by(self.app, envelope, process)
        self.send_many([envelope])
        return Started(self, envelope.id, ids)

    def envelope(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        reserved: bool = False,
        **attributes: Any,
    ) -> Envelope:
        """Build (and validate) the envelope :meth:`send` would publish (``reserved``:
        as in :meth:`send`)."""
        if isinstance(event, str):
            cls = None if self.app is None else self.app.event_class(event)
            envelope = Envelope(
                type=event,
                data=data or {},
                partitionkey=None if cls is None else _key_of(cls, data),
            )
        else:
            if data is not None:
                raise TypeError("send(data=...) is only for send('type', data=...)")
            envelope = event.envelope
        if key is not None:
            attributes[protocol.PARTITIONKEY] = str(key)
        if attributes:
            envelope = Envelope(**{**_fields(envelope), **attributes})
        self.codec.check(envelope, reserved=reserved)
        self.codec.validate(envelope)
        return envelope

    def send_many(self, events: Iterable[Envelope | Event], *, reserved: bool = False) -> list[str]:
        """Publish several events (``Event`` objects or envelopes, e.g. from
        :meth:`envelope`) atomically, all or none; returns their ids.

        Raises:
            EventError: one of them could not be sent (see :meth:`send`); none was.
            TypeError: one of them is neither an ``Event`` nor an ``Envelope``.
        """
        batch = self._checked(events, reserved=reserved)
        traced = tracehooks.send_spans(batch)
        if traced is None:
            self._sends.append(self.codec.records(batch))
            return [e.id for e in batch]
        batch, spans = traced
        try:
            self._sends.append(self.codec.records(batch))
        except BaseException as error:
            spans.end(error)
            raise
        spans.end()
        return [e.id for e in batch]

    def _checked(
        self, events: Iterable[Envelope | Event], *, reserved: bool = False
    ) -> list[Envelope]:
        """The envelopes :meth:`send_many` would publish, each validated."""
        batch = []
        for event in events:
            if isinstance(event, Event):
                batch.append(self.envelope(event, reserved=reserved))
            elif isinstance(event, Envelope):
                self.codec.check(event, reserved=reserved)
                batch.append(event)
            else:
                raise TypeError(
                    f"send_many takes Event objects or envelopes, not {type(event).__name__}"
                )
        return batch

    def send_raw(self, value: bytes, *, key: str | None = None) -> tuple[int, int]:
        """Append raw bytes unvalidated, as any producer could (malformed input ends up in
        the dead-letter queue). Returns (partition, offset)."""
        position = self._sends.append([NewRecord(key, value)])[0]
        assert position is not None
        return position

    # -- reading ---------------------------------------------------------------------------

    def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Instance]:
        """Instances, oldest first, optionally filtered."""
        rows = self.backend.store.instances(process=process, status=status, limit=limit)
        return [_instance(r) for r in rows]

    def instance_counts(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        """How many instances each (process, status) has, optionally of one process."""
        return dict(sorted(self.backend.store.count_instances(process=process).items()))

    def find_instances(
        self,
        *,
        process: str | None = None,
        status: str | None = None,
        key: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> InstancePage:
        """A page of instances, newest first, answered by the store's indexes (quick on
        millions of rows): every filter given must hold.

        Args:
            created_from: only instances created at or after it.
            created_to: only instances created before it.
            search: an instance id, the start of one, or a key.
            cursor: the ``cursor`` of the previous page (instances created meanwhile do
                not shift the pages: they are newer than every page after the first).
            limit: instances per page.

        Raises:
            ConfigError: ``cursor`` is not one this method made, or ``limit`` is not a
                positive integer.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, not {limit!r}")
        query = InstanceQuery(
            process=process,
            status=None if status is None else str(status),
            key=key,
            created_from=None if created_from is None else _unix(created_from),
            created_to=None if created_to is None else _unix(created_to),
            search=search or None,
            before=None if cursor is None else _decode_cursor(cursor),
            limit=limit + 1,  # one more says whether there is a next page
        )
        rows = self.backend.store.find_instances(query)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1].created, rows[-1].id) if more else None
        return InstancePage([_instance(r) for r in rows], next_cursor)

    def instance_activity(
        self, *, since: datetime, width: timedelta = timedelta(minutes=1)
    ) -> list[ActivityRow]:
        """Instances started, completed and failed per ``width`` from ``since`` until
        now, counted in the store (oldest bucket first; empty buckets left out).

        Raises:
            ConfigError: ``width`` is not positive.
        """
        seconds = width.total_seconds()
        if seconds <= 0:
            raise ConfigError(f"width must be positive, not {width}")
        return self.backend.store.instance_activity(_unix(since), seconds)

    def instance(self, instance_id: str) -> Instance:
        """One instance by id; a unique prefix or suffix of at least 6 characters also
        works (ids of triggers with generated ids start with their time, so a suffix is the
        handier short form).

        Raises:
            NotFound: no instance has that id, or the prefix/suffix is ambiguous (the
                message lists the instances it matches).
        """
        row = self.backend.store.instance(instance_id)
        if row is None and len(instance_id) >= MIN_SHORT_ID:
            matches = [
                r
                for r in self.backend.store.instances(limit=ALL)
                if r.id.startswith(instance_id) or r.id.endswith(instance_id)
            ]
            if len(matches) == 1:
                row = matches[0]
            elif matches:
                listed = ", ".join(f"{r.id} ({r.process}, {r.status})" for r in matches[:10])
                more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
                raise NotFound(
                    f"{instance_id!r} matches {len(matches)} instances: {listed}{more}; "
                    "give more characters"
                )
        if row is None:
            # deleted by retention? (the last DELETED_KEPT per engine are remembered)
            gone = find_deleted(self.backend.store.scan(DELETED), instance_id)
            if gone is not None:
                raise NotFound(deleted_message(instance_id, *gone))
            hint = (
                f" (a prefix or suffix needs at least {MIN_SHORT_ID} characters)"
                if len(instance_id) < MIN_SHORT_ID
                else ""
            )
            raise NotFound(f"no instance {instance_id!r}{hint}")
        return _instance(row)

    def journal(self, instance_id: str) -> list[dict[str, Any]]:
        """The instance's journal entries (see ``overture.core.journal``)."""
        return self.backend.store.journal(self.instance(instance_id).id)

    def timeline(self, instance_id: str) -> list[tuple[datetime | None, str]]:
        """The journal as (time, description) lines."""
        out = []
        for entry in self.journal(instance_id):
            t = entry.get("t")
            out.append((None if t is None else datetime.fromtimestamp(t, UTC), jr.describe(entry)))
        return out

    def events(
        self, *, type: str | None = None, start: dict[int, int] | None = None, limit: int = 10_000
    ) -> list[LoggedEvent]:
        """Events in the log (per partition in offset order), optionally of one type."""
        out: list[LoggedEvent] = []
        for event in self._scan(start or {}):
            if type is None or (event.envelope is not None and event.envelope.type == type):
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def follow(
        self, *, type: str | None = None, from_end: bool = False, poll: float = 0.1
    ) -> Iterator[LoggedEvent]:
        """Yield events as they are appended (forever)."""
        log = self.backend.log
        positions = {p: (log.end_offset(p) if from_end else 0) for p in range(log.partitions)}
        while True:
            got = False
            for event in self._scan(positions):
                positions[event.partition] = event.offset + 1
                got = True
                if type is None or (event.envelope is not None and event.envelope.type == type):
                    yield event
            if not got:
                time.sleep(poll)

    def _scan(self, start: dict[int, int]) -> Iterator[LoggedEvent]:
        log = self.backend.log
        for part in range(log.partitions):
            offset = start.get(part, 0)
            while True:
                records = log.read(part, offset, 1000)
                if not records:
                    break
                for rec in records:
                    if rec.error is not None:  # the log could not make an event of it
                        yield LoggedEvent(part, rec.offset, None, rec.value, rec.error)
                        continue
                    try:
                        yield LoggedEvent(
                            part, rec.offset, self.codec.from_bytes(rec.value), rec.value
                        )
                    except MalformedEvent as error:
                        yield LoggedEvent(part, rec.offset, None, rec.value, str(error))
                offset = records[-1].offset + 1

    def lag(self, *, group: str | None = None) -> dict[int, int]:
        """Records of each partition not yet consumed by the engines: the log's end
        minus the offset their consumer group committed (0: caught up).

        Args:
            group: the engines' consumer group (default: that of the client's app's
                engines, ``engine:<app name>``, unless ``EngineOptions.group`` changed it).

        Raises:
            ConfigError: neither an app (``Client(app=...)``) nor a group was given.

        On Kafka the end counts the transaction markers too, so a caught-up partition
        may show 1.
        """
        if group is None:
            if self.app is None:
                raise ConfigError("lag needs the app (Client(app=...)) or a consumer group")
            group = f"engine:{self.app.name}"
        committed = self.backend.store.offsets(group)
        log = self.backend.log
        return {p: max(log.end_offset(p) - committed.get(p, 0), 0) for p in range(log.partitions)}

    def window(self, name: str, key: str | None = None) -> list[Any]:
        """The open windows of stream operator ``name`` (of one key, or of all), as
        ``WindowResult``s with their current values, from the committed state.

        Raises:
            ConfigError: the client has no app.
            NotFound: the app has no operator ``name``.
        """
        return stream_view(self._streams(), self.backend.store, name, key).open

    def late_events(self, name: str) -> int:
        """How many events stream operator ``name`` dropped as late (every partition)."""
        return stream_view(self._streams(), self.backend.store, name, None).late

    def _streams(self) -> list[Any] | None:
        return None if self.app is None else self.app.streams

    def dead_letters(self) -> list[DeadLetter]:
        """Everything parked in the dead-letter queue, with reason and original bytes."""
        return self.backend.store.dead_letters()

    # -- operating ---------------------------------------------------------------------------

    def cancel(self, instance_id: str) -> str:
        """Ask the engine to cancel an instance (asynchronously). Returns the request's
        event id."""
        instance = self.instance(instance_id)
        if instance.status in FINAL:
            raise ConfigError(f"instance {instance.id} is already {instance.status}")
        envelope = Envelope(
            type=protocol.CANCEL, data={"instance_id": instance.id}, partitionkey=instance.key
        )
        self.codec.check(envelope, reserved=True)
        # to the partition whose engine holds the instance: the one its trigger arrived
        # on, which is not its key's when the trigger was keyless
        row = self.backend.store.instance(instance.id)
        partition = None if row is None else row.partition
        self._sends.append(
            [
                NewRecord(
                    instance.key,
                    self.codec.to_bytes(envelope),
                    envelope.id,
                    envelope.type,
                    partition,
                )
            ]
        )
        return envelope.id

    def replay_dead_letter(self, dead_letter_id: str) -> str:
        """Ask the engine to retry a dead letter (a handler runs again; an undecodable or
        invalid event is routed again)."""
        letter = self.backend.store.dead_letter(dead_letter_id)
        if letter is None:
            raise NotFound(f"no dead letter {dead_letter_id!r}")
        envelope = Envelope(
            type=protocol.DLQ_REPLAY, data={"id": letter.id}, partitionkey=letter.key
        )
        # to the partition whose engine holds the letter (a keyless or re-keyed event's
        # letter is not necessarily where its key points)
        record = NewRecord(
            letter.key, self.codec.to_bytes(envelope), envelope.id, envelope.type, letter.partition
        )
        self.backend.log.append([record])
        return envelope.id

    def delete_dead_letters(
        self,
        ids: Iterable[str] | None = None,
        *,
        all: bool = False,
        reason: str | None = None,
    ) -> DeadLettersDeleted:
        """Delete dead letters for good: those ``ids`` names, or every one (``all``).
        Either all of them are deleted or none: an unknown id deletes nothing.

        On SQLite and memory they are deleted in one transaction of the store, now
        (an engine running or not). On Kafka the letters are the engines' changelog:
        one ``overture.dlq.delete`` event per partition asks its engine, which deletes
        them in one transaction (changelog tombstones); ``requests`` names the events.
        ``reason`` is logged by whoever deletes (this client, or the engine).

        Raises:
            NotFound: an id names no dead letter (the message lists them); nothing
                was deleted.
            ConfigError: neither or both of ``ids`` and ``all``, or no id.
        """
        if (ids is None) == (not all):
            raise ConfigError("give dead letter ids or all=True, not both or neither")
        wanted = None if ids is None else list(dict.fromkeys(ids))
        if wanted is not None and (not wanted or not all_text(wanted)):
            raise ConfigError("give at least one dead letter id (non-empty strings)")
        backend = self.backend
        if backend.capabilities.deletes_dead_letters:
            deleted = backend.delete_dead_letters(wanted)
            if deleted:
                _dlq_log.info("deleted dead letters %s (reason: %s)", deleted, reason)
            return DeadLettersDeleted(deleted, [])
        letters = {letter.id: letter for letter in backend.store.dead_letters()}
        if wanted is None:
            wanted = list(letters)
        missing = [i for i in wanted if i not in letters]
        if missing:
            raise NotFound(missing_letters(missing))
        # one request per partition whose engine holds some of them (a keyless or
        # re-keyed event's letter is not necessarily where its key points: its
        # ``partition`` says where it is)
        groups: dict[tuple[int | None, str | None], list[str]] = {}
        for dl_id in wanted:
            letter = letters[dl_id]
            where = letter.key if letter.partition is None else None
            groups.setdefault((letter.partition, where), []).append(dl_id)
        records, requests = [], []
        for (partition, key), group in groups.items():
            envelope = Envelope(
                type=protocol.DLQ_DELETE,
                data={"ids": group, "reason": reason},
                partitionkey=key if key is not None else letters[group[0]].key,
            )
            records.append(
                NewRecord(
                    envelope.partitionkey,
                    self.codec.to_bytes(envelope),
                    envelope.id,
                    envelope.type,
                    partition,
                )
            )
            requests.append(envelope.id)
        if records:
            backend.log.append(records)
        return DeadLettersDeleted(wanted, requests)

    def wait(self, instance_id: str, *, timeout: float = 30.0) -> Instance:
        """Block until the instance has finished (completed, failed or cancelled), woken
        by the commit that finishes it. ``instance_id`` may be a short form (see
        :meth:`instance`) of a started instance, or the full id of one not started yet.

        Raises:
            TimeoutError: it did not finish in time.
        """
        full = self._full_id(instance_id)
        return _instance(self._results.wait(full, timeout, shown=instance_id))

    def _full_id(self, instance_id: str) -> str:
        try:
            return self.instance(instance_id).id
        except NotFound:
            return instance_id  # not started yet: wait for exactly this id


def all_text(values: list[Any]) -> bool:
    """Whether every value is a non-empty string."""
    return all(isinstance(v, str) and v for v in values)


def _key_of(cls: type[Event], data: dict[str, Any] | None) -> str | None:
    if cls.key_field is None or not data or data.get(cls.key_field) is None:
        return None
    return str(data[cls.key_field])


def _fields(envelope: Envelope) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in Envelope.__slots__}


def _instance(row: Any) -> Instance:
    return Instance(
        row.id,
        row.process,
        row.version,
        row.key,
        Status(row.status),
        datetime.fromtimestamp(row.created, UTC),
        datetime.fromtimestamp(row.updated, UTC),
        row.trigger_id,
        row.result,
        row.error,
    )


def _unix(moment: datetime) -> float:
    """Unix time of ``moment`` (a naive datetime is taken as UTC)."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _encode_cursor(created: float, instance_id: str) -> str:
    # the stored float itself, not the Instance's datetime (rounded to microseconds), so
    # the next page starts exactly after this row
    raw = orjson.dumps([created, instance_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created, last = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise ValueError
        if not isinstance(last, str):
            raise ValueError
    except (binascii.Error, ValueError, TypeError):  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"invalid cursor {cursor!r}: pass the cursor of a previous page"
        ) from None
    return float(created), last
