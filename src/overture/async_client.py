"""The asyncio client: :class:`~overture.Client`'s surface, awaitable.

It shares the synchronous client's implementation (as httpx's ``AsyncClient`` shares
``Client``'s): sends go to the same group committer, so the concurrent ``send`` calls of
one process's tasks are committed in one transaction and each awaits its own commit;
results come from the same commit-woken futures. Reads that touch only local state
(memory, SQLite) run inline; the rest run in a worker thread so the loop never blocks on
the network.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .app import App
from .backends import DEFAULT_URL, renamed_broker
from .client import Client, DeadLettersDeleted, Instance, InstancePage, LoggedEvent, _instance
from .codec import Codec
from .events import Envelope, Event
from .groupcommit import Positions
from .handles import AsyncStarted, started_by
from .observe import tracehooks
from .ports import ActivityRow, Backend, DeadLetter, InstanceRow, NewRecord

T = TypeVar("T")


class AsyncClient:
    """Send events and query instances from asyncio code.

    Args:
        backend: a backend URL (``sqlite:///path.db``, ``memory://``, ``kafka://…``) or an
            open backend.
        app: optional; when given, events of types it defines are validated before sending,
            and :meth:`start` knows which processes an event starts.
        codec: as for :class:`~overture.Client`.
    """

    def __init__(
        self,
        backend: str | Backend = DEFAULT_URL,
        *,
        app: App | None = None,
        codec: Codec | None = None,
        broker: str | Backend | None = None,
    ) -> None:
        backend = renamed_broker("AsyncClient", backend, DEFAULT_URL, broker)
        self.sync = Client(backend, app=app, codec=codec)
        """The synchronous client this one shares its connections and committer with."""
        self._local = not self.sync.backend.capabilities.remote
        self._handing: list[tuple[list[NewRecord], asyncio.Future[Positions]]] = []

    @property
    def backend(self) -> Backend:
        return self.sync.backend

    @property
    def app(self) -> App | None:
        return self.sync.app

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------

    async def send(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        reserved: bool = False,
        **attributes: Any,
    ) -> str:
        """Publish one event once committed; returns its id (see :meth:`Client.send`).

        Raises:
            EventValidationError: the data violates the type's registered contract, or
                the type is reserved and ``reserved`` is not set (only this call fails;
                concurrent sends are unaffected).
        """
        envelope = self.envelope(event, data, key=key, reserved=reserved, **attributes)
        await self._traced_append([envelope])  # envelope() checked it
        return envelope.id

    def envelope(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        reserved: bool = False,
        **attributes: Any,
    ) -> Envelope:
        """Build (and validate) the envelope :meth:`send` would publish."""
        return self.sync.envelope(event, data, key=key, reserved=reserved, **attributes)

    async def send_many(
        self, events: Iterable[Envelope | Event], *, reserved: bool = False
    ) -> list[str]:
        """Publish several events (``Event`` objects or envelopes) atomically, all or
        none; returns their ids (see :meth:`Client.send_many`)."""
        return await self._traced_append(self.sync._checked(events, reserved=reserved))

    async def _traced_append(self, batch: list[Envelope]) -> list[str]:
        """Append checked events, in PRODUCER spans when a tracer provider is set."""
        traced = tracehooks.send_spans(batch)
        if traced is None:
            await self._append(self.sync.codec.records(batch))
            return [e.id for e in batch]
        batch, spans = traced
        try:
            await self._append(self.sync.codec.records(batch))
        except BaseException as error:
            spans.end(error)
            raise
        spans.end()
        return [e.id for e in batch]

    async def send_raw(self, value: bytes, *, key: str | None = None) -> tuple[int, int]:
        """Append raw bytes unvalidated (see :meth:`Client.send_raw`)."""
        position = (await self._append([NewRecord(key, value)]))[0]
        assert position is not None
        return position

    async def start(
        self,
        event: Event | str,
        data: dict[str, Any] | None = None,
        *,
        process: str | None = None,
        key: str | None = None,
        **attributes: Any,
    ) -> AsyncStarted:
        """Send an event that starts instances; returns a handle whose ``await
        handle.result(timeout=)`` is woken by the commit that finishes the instance (see
        :meth:`Client.start`)."""
        envelope = self.envelope(event, data, key=key, **attributes)
        ids = started_by(self.app, envelope, process)
        await self._traced_append([envelope])  # envelope() checked it
        return AsyncStarted(self, envelope.id, ids)

    async def _append(self, records: list[NewRecord]) -> Positions:
        # Sends started in one iteration of the loop are handed to the committer together
        # (at the end of the iteration), so they share one append deterministically.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Positions] = loop.create_future()
        self._handing.append((records, waiter))
        if len(self._handing) == 1:
            loop.call_soon(self._hand_over)
        return await waiter

    def _hand_over(self) -> None:
        handing, self._handing = self._handing, []
        loop = asyncio.get_running_loop()
        waiters = [waiter for _, waiter in handing]

        def done(outcomes: list[Positions | BaseException]) -> None:  # the flusher's thread
            try:  # one wake-up of the loop for the whole group
                loop.call_soon_threadsafe(_settle, waiters, outcomes)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        self.sync._sends.submit_all([records for records, _ in handing], done)

    # -- results ---------------------------------------------------------------------------

    async def wait(self, instance_id: str, *, timeout: float = 30.0) -> Instance:  # noqa: ASYNC109 (Client.wait's surface)
        """Wait until the instance has finished (see :meth:`Client.wait`).

        Raises:
            TimeoutError: it did not finish in time.
        """
        full = await self._run(self.sync._full_id, instance_id)
        return _instance(await self._finished(full, timeout, shown=instance_id))

    async def _finished(
        self,
        instance_id: str,
        timeout: float,  # noqa: ASYNC109
        *,
        shown: str | None = None,
    ) -> InstanceRow:
        results = self.sync._results
        waiter = results.future_async(instance_id)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            # after the watcher is in place: a commit from now on wakes us, one before is seen
            await self._run(results.check, instance_id)
            return await waiter
        except TimeoutError:
            error = await self._run(results.timed_out, shown or instance_id, instance_id, timeout)
            raise error from None
        finally:
            timer.cancel()
            results.forget(instance_id, waiter)  # timed out or cancelled (else a no-op)

    # -- reading and operating ---------------------------------------------------------------

    async def instances(
        self, *, process: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Instance]:
        """Instances, oldest first, optionally filtered."""
        return await self._run(
            lambda: self.sync.instances(process=process, status=status, limit=limit)
        )

    async def instance_counts(self, *, process: str | None = None) -> dict[tuple[str, str], int]:
        """How many instances each (process, status) has (see :meth:`Client.instance_counts`)."""
        return await self._run(lambda: self.sync.instance_counts(process=process))

    async def find_instances(
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
        """A page of instances, newest first (see :meth:`Client.find_instances`)."""
        return await self._run(
            lambda: self.sync.find_instances(
                process=process,
                status=status,
                key=key,
                created_from=created_from,
                created_to=created_to,
                search=search,
                cursor=cursor,
                limit=limit,
            )
        )

    async def instance_activity(
        self, *, since: datetime, width: timedelta = timedelta(minutes=1)
    ) -> list[ActivityRow]:
        """Started/completed/failed per bucket (see :meth:`Client.instance_activity`)."""
        return await self._run(lambda: self.sync.instance_activity(since=since, width=width))

    async def instance(self, instance_id: str) -> Instance:
        """One instance by id or unique short form (see :meth:`Client.instance`)."""
        return await self._run(self.sync.instance, instance_id)

    async def journal(self, instance_id: str) -> list[dict[str, Any]]:
        """The instance's journal entries."""
        return await self._run(self.sync.journal, instance_id)

    async def timeline(self, instance_id: str) -> list[tuple[datetime | None, str]]:
        """The journal as (time, description) lines."""
        return await self._run(self.sync.timeline, instance_id)

    async def events(
        self, *, type: str | None = None, start: dict[int, int] | None = None, limit: int = 10_000
    ) -> list[LoggedEvent]:
        """Events in the log (per partition in offset order), optionally of one type."""
        return await asyncio.to_thread(self.sync.events, type=type, start=start, limit=limit)

    async def follow(
        self, *, type: str | None = None, from_end: bool = False, poll: float = 0.1
    ) -> AsyncIterator[LoggedEvent]:
        """Yield events as they are appended (forever)."""
        log = self.backend.log
        positions = {p: (log.end_offset(p) if from_end else 0) for p in range(log.partitions)}
        while True:
            batch = await asyncio.to_thread(self.sync.events, start=dict(positions), limit=1000)
            for event in batch:
                positions[event.partition] = event.offset + 1
                if type is None or (event.envelope is not None and event.envelope.type == type):
                    yield event
            if not batch:
                await asyncio.sleep(poll)

    async def window(self, name: str, key: str | None = None) -> list[Any]:
        """``Client.window``: the open windows of stream operator ``name``."""
        return await self._run(self.sync.window, name, key)

    async def late_events(self, name: str) -> int:
        """``Client.late_events``: how many events operator ``name`` dropped as late."""
        return await self._run(self.sync.late_events, name)

    async def dead_letters(self) -> list[DeadLetter]:
        """Everything parked in the dead-letter queue."""
        return await self._run(self.sync.dead_letters)

    async def cancel(self, instance_id: str) -> str:
        """Ask the engine to cancel an instance; returns the request's event id."""
        return await asyncio.to_thread(self.sync.cancel, instance_id)

    async def replay_dead_letter(self, dead_letter_id: str) -> str:
        """Ask the engine to retry a dead letter."""
        return await asyncio.to_thread(self.sync.replay_dead_letter, dead_letter_id)

    async def delete_dead_letters(
        self,
        ids: Iterable[str] | None = None,
        *,
        all: bool = False,
        reason: str | None = None,
    ) -> DeadLettersDeleted:
        """``Client.delete_dead_letters``: delete dead letters (all or none)."""
        return await asyncio.to_thread(
            functools.partial(self.sync.delete_dead_letters, ids, all=all, reason=reason)
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: inline on a local backend, in a worker thread on a remote one."""
        if self._local:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _settle(
    waiters: list[asyncio.Future[Positions]], outcomes: list[Positions | BaseException]
) -> None:
    """Pass committed (or failed) sends' outcomes to their waiting coroutines."""
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if waiter.cancelled():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
