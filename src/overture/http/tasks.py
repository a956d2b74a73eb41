"""The task endpoints for HTTP workers: claim (a long poll), heartbeat, complete, fail.

A worker in any language that speaks HTTP takes attempts from the backend's task queue
(``Backend.tasks``, the :class:`~overture.ports.TaskQueue` port) through these routes, and
answers them with only the outcome: the API builds the result event from the attempt's
request with ``overture.tasks.completed`` / ``failed`` (the one place every worker's
result is built) and hands it to ``TaskQueue.finish``. ``docs/protocol.md`` ("Over
HTTP") is the contract these routes implement.

Finding the request again. ``complete`` and ``fail`` name only the attempt id, but the
result needs the request (its ``source``, ``reply``, ``traceparent``, ``tenant``). This
module keeps the requests it handed out (:class:`Handouts`) and otherwise asks the queue
(``TaskQueue.request``): on SQLite any API process finds any attempt, so a worker may
answer through another process than the one it claimed from; on Kafka only the member
of the queue's worker group that holds an attempt has it (and only it can finish it).
Rejected: rebuilding the request from the id (it gives the instance, the call and the
attempt, but the reply, trace and tenant live only in the request; reading them from
the engine's journal would make the API a second author of what ``runtime/tasks.py``
publishes); having the worker send the request back (it would let a worker rewrite the
result's reply and tenant).

Every port call blocks (SQLite's write lock and fsync, a Kafka acknowledgement), so each
runs in a daemon thread (``worker_threads.PortThreads``, the Python worker's), never on
the event loop; a long poll waits on the loop for the queue's wake-up
(``TaskQueue.subscribe``, one subscription for the whole API), re-claiming at least
every :data:`POLL` seconds for attempts whose lease ran out (nobody rings for those).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from .. import events, protocol, tasks
from ..errors import EventValidationError, MalformedEvent
from ..events import Envelope
from ..ports import ClaimedTask, NewRecord, TaskQueue
from ..worker_threads import PortThreads, on_pool
from . import binding
from .models import (
    ClaimBody,
    Claimed,
    CompleteBody,
    FailBody,
    Finished,
    HeartbeatBody,
    Lease,
    Problem,
)
from .problems import ApiError
from .state import ApiState

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

POLL = 1.0
"""Seconds between the claims of a long poll that nothing wakes: an attempt whose lease
ran out becomes claimable without any commit to ring for it."""
REMEMBERED = 100_000
"""How many attempts an API process remembers having handed out (the oldest forgotten
first): an answer for a forgotten one is a 404."""
PORT_THREADS = 32
"""The most port calls in flight at once (finishes issued together share a SQLite
transaction)."""

_404 = "no attempt {id!r} is known here (check the id; on Kafka an attempt is answered "
_404 += "through the API process whose claim returned it)"


@dataclass(slots=True)
class _Handout:
    request: bytes | None  # None once the attempt ended here
    queue: str


class Handouts:
    """The attempts this API process handed out, by id, oldest first: their request
    bytes while open, a mark once ended (a later answer is a 409, not a 404). At most
    :data:`REMEMBERED` of them."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._known: OrderedDict[str, _Handout] = OrderedDict()

    def add(self, claimed: ClaimedTask) -> None:
        self._known[claimed.id] = _Handout(claimed.request, claimed.queue)
        self._known.move_to_end(claimed.id)
        while len(self._known) > self._limit:
            self._known.popitem(last=False)

    def get(self, task_id: str) -> _Handout | None:
        return self._known.get(task_id)

    def end(self, task_id: str) -> None:
        known = self._known.get(task_id)
        if known is not None:
            known.request = None

    def forget(self, task_id: str) -> None:
        self._known.pop(task_id, None)


class _Bell:
    """One subscription to the queue for every long poll of the API: each wake-up sets
    the current event and starts a new one, so a poll that took the event before its
    claim cannot miss a wake-up that comes between the claim and its wait."""

    def __init__(self, queue: TaskQueue) -> None:
        self._queue = queue
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def current(self) -> asyncio.Event:
        if self._event is None:
            loop = self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()

            def woken() -> None:  # any thread: the queue's watcher, a committer
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self._ring)

            self._unsubscribe = self._queue.subscribe(woken)
        return self._event

    def _ring(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    def ring(self) -> None:
        """Wake every long poll (from any thread)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._ring)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


def _errors(*pairs: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem, "description": text} for status, text in pairs}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_BAD = (422, "a bad body: the message and `field` name the member at fault")
_NOT_JSON = (400, "the body is not UTF-8 or not JSON")
_UNKNOWN = (404, "this API process handed out no such attempt")


class TaskDesk:
    """The task routes of one API and what they share: the queue, the attempts handed
    out, the long polls' bell and the threads of the port calls.

    Args:
        state: the API's state (the client's backend has the queue, its codec builds
            the results).
    """

    def __init__(self, state: ApiState) -> None:
        self._state = state
        self._queue = state.client.backend.tasks
        self._codec = state.client.sync.codec
        self._handouts = Handouts()
        self._bell = _Bell(self._queue)
        self._threads = PortThreads(PORT_THREADS, "overture-api-tasks")
        self._stopping = False

    def stop_polls(self) -> None:
        """The server is stopping: long polls answer now (with what they have) instead of
        being cut off when the shutdown's grace runs out. Safe from any thread."""
        self._stopping = True
        self._bell.ring()

    def close(self) -> None:
        """Unsubscribe from the queue and let the threads end."""
        self._bell.close()
        self._threads.shutdown()

    async def _port(self, fn: Callable[..., T], *args: Any) -> T:
        return await on_pool(self._threads, lambda: fn(*args))

    async def _parse(self, request: Request, model: type[M]) -> M:
        raw = await binding.read_body(request, self._state.max_body)
        value = binding.parse_json(raw, "the body")
        if not isinstance(value, dict):
            raise ApiError(422, "the body must be a JSON object", field="body")
        # orjson rounds an integer beyond 64 bits to a float: the output would not be
        # the worker's (parse_json checks only an event's data member)
        for name, item in events.loads_exact(raw).items():
            problem = events.number_problem(item, name)
            if problem is not None:
                raise ApiError(422, f"invalid body: {problem}", field=name)
        try:
            return model.model_validate(value)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in error.errors()
            )
            raise ApiError(422, f"invalid body: {problems}", field=field) from None

    def router(self) -> APIRouter:
        """The task routes."""
        routes = APIRouter(tags=["tasks"])

        @routes.post(
            "/tasks/claim",
            response_model=Claimed,
            responses=_errors(_NOT_JSON, _BAD),
            openapi_extra=_body(ClaimBody),
            summary="Claim task attempts (long poll)",
        )
        async def claim(request: Request) -> Response:
            """Up to ``max`` attempts of ``queues`` that nobody holds, leased to
            ``worker`` for ``lease`` seconds; with ``wait`` > 0 answered as soon as
            attempts are published, or with none after ``wait`` seconds."""
            body: ClaimBody = await self._parse(request, ClaimBody)
            claimed = await self._claim(body)
            out = []
            for one in claimed:
                self._handouts.add(one)
                out.append(
                    {
                        "id": one.id,
                        "queue": one.queue,
                        "lease_until": one.lease_until,
                        "request": orjson.Fragment(one.request),
                    }
                )
            return _json({"tasks": out})

        @routes.post(
            "/tasks/{task_id}/heartbeat",
            response_model=Lease,
            responses=_errors(
                _NOT_JSON,
                _UNKNOWN,
                (409, "the attempt is not this worker's any more, or it ended: stop"),
                _BAD,
            ),
            openapi_extra=_body(HeartbeatBody),
            summary="Extend the lease of an attempt",
        )
        async def heartbeat(task_id: str, request: Request) -> JSONResponse:
            """Extend ``worker``'s lease of the attempt by ``lease`` seconds from now."""
            body: HeartbeatBody = await self._parse(request, HeartbeatBody)
            known = await self._known(task_id)
            if known.request is None:
                raise ApiError(409, f"attempt {task_id!r} has ended: stop working on it")
            until = time.time() + body.lease  # before the port's: never later than it
            if not await self._port(self._queue.heartbeat, task_id, body.worker, body.lease):
                raise ApiError(
                    409,
                    f"attempt {task_id!r} is not held by {body.worker!r} any more (its lease "
                    "ran out and another worker claimed it, or the attempt ended): stop "
                    "working on it",
                )
            return JSONResponse({"lease_until": until})

        @routes.post(
            "/tasks/{task_id}/complete",
            response_model=Finished,
            responses=_errors(
                _NOT_JSON, _UNKNOWN, (409, "the attempt has ended: the result was dropped"), _BAD
            ),
            openapi_extra=_body(CompleteBody),
            summary="Complete an attempt",
        )
        async def complete(task_id: str, request: Request) -> JSONResponse:
            """Answer the attempt with ``output``: its ``overture.task.completed`` result
            is appended to the log and the claim ends."""
            body: CompleteBody = await self._parse(request, CompleteBody)
            envelope, message = await self._request(task_id)
            try:
                record = tasks.completed(self._codec, envelope, message, body.output)
            except EventValidationError as error:
                raise ApiError(422, f"invalid body: output: {error}", field="output") from None
            return await self._finish(task_id, body.worker, record)

        @routes.post(
            "/tasks/{task_id}/fail",
            response_model=Finished,
            responses=_errors(
                _NOT_JSON, _UNKNOWN, (409, "the attempt has ended: the result was dropped"), _BAD
            ),
            openapi_extra=_body(FailBody),
            summary="Fail an attempt",
        )
        async def fail(task_id: str, request: Request) -> JSONResponse:
            """Answer the attempt with a failure: ``retryable`` false ends the call at
            once (the process gets ``ov.TaskFailed``), else its retry policy decides."""
            body: FailBody = await self._parse(request, FailBody)
            envelope, message = await self._request(task_id)
            record = tasks.failed(
                self._codec,
                envelope,
                message,
                body.error.type,
                body.error.message,
                retryable=body.retryable,
            )
            return await self._finish(task_id, body.worker, record)

        return routes

    async def _claim(self, body: ClaimBody) -> list[ClaimedTask]:
        loop = asyncio.get_running_loop()
        end = loop.time() + body.wait
        queues = list(dict.fromkeys(body.queues))
        while True:
            # the event is taken before the claim: a wake-up during it is not missed
            woken = self._bell.current() if body.wait > 0 else None
            claimed = await self._port(self._queue.claim, queues, body.worker, body.max, body.lease)
            left = end - loop.time()
            if claimed or woken is None or left <= 0 or self._stopping:
                return claimed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, POLL))

    async def _known(self, task_id: str) -> _Handout:
        """What this process knows of an attempt: what its own claim handed out, else
        what the queue has (another API process's claim handed it out; on Kafka only
        the attempts this process's consumers hold).

        Raises:
            ApiError: 404 the attempt is unknown here.
        """
        known = self._handouts.get(task_id)
        if known is not None:
            return known
        raw = await self._port(self._queue.request, task_id)
        if raw is None:
            raise ApiError(404, _404.format(id=task_id))
        return _Handout(raw, "")

    async def _request(self, task_id: str) -> tuple[Envelope, protocol.TaskRequest]:
        """The envelope and message of an attempt.

        Raises:
            ApiError: 404 unknown, 409 it has ended.
        """
        known = await self._known(task_id)
        if known.request is None:
            raise ApiError(409, f"attempt {task_id!r} has ended: the result was dropped")
        try:
            return tasks.parse_request(self._codec, known.request)
        except (MalformedEvent, EventValidationError) as error:
            # not a request this app's codec reads (another app's payload codec, say)
            raise ApiError(
                409, f"attempt {task_id!r} cannot be answered through this API: {error}"
            ) from None

    async def _finish(self, task_id: str, worker: str, record: NewRecord) -> JSONResponse:
        outcome = await self._port(self._queue.finish, task_id, worker, record)
        if outcome == "accepted":
            self._handouts.end(task_id)
            return JSONResponse({"status": "accepted"})
        if outcome == "ended":
            self._handouts.end(task_id)
            raise ApiError(409, f"attempt {task_id!r} has ended: the result was dropped")
        # on Kafka: this process's consumer no longer holds the attempt (a rebalance
        # moved its partition to another member of the worker group)
        self._handouts.forget(task_id)
        raise ApiError(
            404,
            f"attempt {task_id!r} is no longer held by this API process (on Kafka its "
            "partition moved to another member of the worker group); nothing was written",
        )


def _json(content: dict[str, Any]) -> Response:
    """A JSON answer with the request events spliced in as the bytes the engine wrote
    (``orjson.Fragment``: not parsed and serialized again)."""
    return Response(orjson.dumps(content), media_type="application/json")
