"""Push tasks: an attempt executed by POSTing its request to the task's URL.

A task declared with a URL (``@app.task("payment.authorize", url=..., secret_env=...)``)
has no worker of its own: the worker that claims its attempts hands each one to a
:class:`PushExecutor`, which POSTs the request CloudEvent to the URL and turns the answer
into the attempt's result record (built by :mod:`overture.tasks`, like every other
worker's). ``docs/protocol.md`` describes the exchange for the people writing the
endpoints.

The request is sent in the CloudEvents HTTP binding's structured mode: the body is the
request event exactly as the engine published it, ``content-type:
application/cloudevents+json``. It is signed per the Standard Webhooks specification
(``webhook-id`` = the attempt id, ``webhook-timestamp``, ``webhook-signature``) with the
task's ``whsec_...`` secret, read from its environment variable once, when the executor
is made: a missing or malformed secret stops the worker at start, not at the first
request. The answer decides the result:

============================  =========================================================
2xx                           completed; output = the JSON body (an empty body: null).
                              A body that is not JSON fails the attempt for good.
408, 429                      retryable failure (``Retry-After`` is ignored: the call's
                              retry policy alone decides when the next attempt runs)
any other 3xx / 4xx           non-retryable failure naming the status and a body excerpt
                              (redirects are not followed: a signed request goes only to
                              the URL the task names)
5xx, connection errors,       retryable failure naming what happened
timeouts
============================  =========================================================

Every push of one executor shares one ``aiohttp.ClientSession`` (its connector keeps up
to :attr:`PushOptions.max_connections` connections, idle ones for the next requests), so
any number of attempts are in flight at once without a thread each and without blocking
the event loop. Requests go straight to the task's URL: the proxy variables of the
environment (``HTTP_PROXY``...) are not used, and no cookies are kept between requests. A
request may take no longer than the attempt has left before its deadline (the engine
drops a later result anyway), else the task's ``timeout``, else :attr:`PushOptions.timeout`.
A network failure is named as ``docs/protocol.md`` documents (``ConnectError``,
``ReadError``, ``RemoteProtocolError``: the names of httpx, the client used before, kept
because a retry policy's ``non_retryable`` may name them), its message aiohttp's with the
operating system's reason.

Rejected: httpx (0.29, over httpcore 1.0), the client until issue 11's W6: per request
it cost 1 to 1.5 ms of CPU in request building, anyio context managers, h11's header
checks and httpcore's pool, whose every pass re-examines all of its connections (a
sharded pool of small httpx transports, ``overture.httppool``, kept that flat but not
cheap). aiohttp's connector takes and returns a connection in constant time, and a push
costs a fifth of the CPU it did (150 against 700 us per push, executor included, at 4 to
100 in flight; docs/benchmarks.md, "W6 with aiohttp").

Rejected: following ``Retry-After``. The engine owns an attempt's retries and its
deadline; a worker sleeping on a server's hint would hold the attempt's lease, and a
second schedule beside the call's retry policy would make the policy a lie.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import certifi
from standardwebhooks import Webhook

from . import protocol, tasks
from .codec import Codec
from .errors import ConfigError, EventValidationError
from .events import Envelope, loads_exact, number_problem
from .ports import ClaimedTask, NewRecord
from .tasks import TaskDef

__all__ = ["CONTENT_TYPE", "PushExecutor", "PushOptions"]

log = logging.getLogger("overture.push")

CONTENT_TYPE = "application/cloudevents+json"
"""The request's content type: a CloudEvent in structured mode."""
_USER_AGENT = "overture-push"
_SECRET_PREFIX = "whsec_"
_SECRET_BYTES = (24, 64)
"""The key length the Standard Webhooks specification asks for (192 to 512 bits)."""
_RETRYABLE_4XX = frozenset({408, 429})
"""Request Timeout and Too Many Requests: the server asks to be tried again later."""
_KEEPALIVE = 5.0
"""Seconds an idle connection is kept for a next request: httpx's default, which push
used before (aiohttp's is 15); shorter than most servers' own idle timeout, so a kept
connection is rarely one the server is closing as it is reused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOptions:
    """How a :class:`PushExecutor` sends its requests."""

    max_connections: int = 100
    """Connections open at once across every push URL (the pool's size); an attempt
    beyond it waits for a free connection, within its own time bound. Idle ones are
    kept for the next requests (up to this many, for ``_KEEPALIVE`` seconds)."""
    timeout: float = 60.0
    """Seconds a request may take when neither the attempt's deadline nor the task's
    ``timeout`` bounds it."""
    max_response: int = 4 * 1024 * 1024
    """The largest response body read, in bytes; a larger one fails the attempt for good
    (its output would be an event that large on the log)."""
    excerpt: int = 200
    """Characters of a response body quoted in a failure's message."""

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_response", "excerpt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PushOptions.{name} must be a positive integer, not {value!r}")
        timeout = self.timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(f"PushOptions.timeout must be a positive number, not {timeout!r}")


@dataclass(frozen=True, slots=True)
class _Target:
    """A push task as the executor sends to it: its definition and its signer."""

    definition: TaskDef
    url: str
    signer: Webhook


class PushExecutor:
    """Runs attempts of push tasks: one call per attempt, many at once.

    Args:
        definitions: the push tasks (``TaskDef`` with a ``url``) this executor serves;
            ``[d for d in app.tasks if d.url]`` for an app's.
        codec: the app's codec (reads the request, writes the result).
        options: the connection pool and limits.
        environ: where the signing secrets are read (default: ``os.environ``), once.

    Raises:
        ConfigError: a definition without a URL, a URL that is not absolute http(s), a
            push task without ``secret_env``, or a secret variable that is unset or not
            a Standard Webhooks secret (``whsec_`` + base64 of 24 to 64 bytes). Nothing
            has been opened then.

    Use it as an async context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        definitions: Iterable[TaskDef],
        codec: Codec,
        *,
        options: PushOptions | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if environ is None:
            environ = os.environ
        self.options = options or PushOptions()
        self._codec = codec
        self._targets: dict[str, _Target] = {}
        for definition in definitions:
            if definition.name in self._targets:
                raise ConfigError(f"push task {definition.name!r} is given twice")
            self._targets[definition.name] = _target(definition, environ)
        # One TLS context for every connection, made here (loading the CA bundle takes
        # ~40 ms: once, not per connection), with the CA bundle httpx used before.
        self._tls = ssl.create_default_context(cafile=certifi.where())
        # The session is made at the first push, on the loop that runs the pushes
        # (aiohttp binds a session and its connector to the running loop; a Worker is
        # made before its loop may run).
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def tasks(self) -> frozenset[str]:
        """The names of the tasks this executor serves."""
        return frozenset(self._targets)

    def serves(self, task: str) -> bool:
        """Whether ``task`` is one of this executor's push tasks."""
        return task in self._targets

    async def run(self, claimed: ClaimedTask) -> NewRecord:
        """Push one claimed attempt and return its result record (completed or failed),
        for the worker to ``finish``. Never raises for what the endpoint or the network
        did: that is the result.

        Raises:
            MalformedEvent: the entry is not an ``overture.task.requested`` CloudEvent.
            EventValidationError: its data is not a task request. (Either way no result
                can be addressed to an instance.)
        """
        envelope, message = tasks.parse_request(self._codec, claimed.request)
        return await self.push(envelope, message, claimed.request)

    async def push(
        self, envelope: Envelope, message: protocol.TaskRequest, raw: bytes
    ) -> NewRecord:
        """Push a parsed attempt (``raw`` = its request as published, sent as it is)."""
        target = self._targets.get(message.task)
        if target is None:
            served = ", ".join(sorted(self._targets)) or "none"
            return self._failed(
                envelope,
                message,
                "UnknownTask",
                f"task {message.task!r} is not a push task of this worker (it serves: {served})",
                retryable=False,
            )
        bound = self._time_bound(target.definition, message)
        if bound <= 0:
            # the engine has given the attempt up: a request now would be wasted, and
            # its result dropped
            return self._failed(
                envelope,
                message,
                "TaskTimeout",
                "the attempt's deadline passed before it was sent",
                retryable=True,
            )
        return await self._post(target, envelope, message, raw, bound)

    async def close(self) -> None:
        """Close the connection pool (attempts still in flight fail; later ones too)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise RuntimeError("the PushExecutor is closed")
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.options.max_connections,
                    limit_per_host=0,
                    ssl=self._tls,
                    keepalive_timeout=_KEEPALIVE,
                ),
                headers={"user-agent": _USER_AGENT},
                # no timeouts of aiohttp's own: asyncio.timeout in _post bounds the
                # whole exchange
                timeout=aiohttp.ClientTimeout(),
                # a push is signed for its URL alone: nothing an endpoint set is sent on
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return session

    async def __aenter__(self) -> PushExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- one request --------------------------------------------------------------------

    def _time_bound(self, definition: TaskDef, message: protocol.TaskRequest) -> float:
        """Seconds the request may take: what is left before the deadline, else the
        task's timeout, else the executor's."""
        limit = self._limit(definition)
        if message.deadline is None:
            return limit
        return min(limit, message.deadline - time.time())

    def _limit(self, definition: TaskDef) -> float:
        return definition.timeout if definition.timeout is not None else self.options.timeout

    async def _post(
        self,
        target: _Target,
        envelope: Envelope,
        message: protocol.TaskRequest,
        raw: bytes,
        bound: float,
    ) -> NewRecord:
        url = target.url
        headers = _signed_headers(target.signer, envelope.id, raw)
        started = time.monotonic()
        session = self._open()
        try:
            # asyncio.timeout bounds the whole exchange (waiting for a pooled connection,
            # connecting, sending, the response's body)
            async with (
                asyncio.timeout(bound),
                session.post(url, data=raw, headers=headers, allow_redirects=False) as response,
            ):
                body, complete = await self._read(response)
        except TimeoutError as exc:  # aiohttp's own timeout errors are TimeoutErrors too
            why = (
                "the time left before the attempt's deadline"
                if message.deadline is not None and bound < self._limit(target.definition)
                else "the task's timeout"
                if target.definition.timeout is not None
                else "PushOptions.timeout"
            )
            return self._failed(
                envelope,
                message,
                "TimeoutError",
                f"POST {url}: no complete response within {bound:.3g} s ({why}; "
                f"{type(exc).__name__} after {time.monotonic() - started:.3g} s)",
                retryable=True,
            )
        except aiohttp.ClientError as exc:
            return self._failed(
                envelope,
                message,
                _error_name(exc),
                f"POST {url} failed: {_describe(exc)}",
                retryable=True,
            )
        log.debug("POST %s for %s: %d", url, envelope.id, response.status)
        return self._answer(url, envelope, message, response, body, complete)

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """The response's body, at most ``max_response`` bytes; whether it was whole."""
        limit = self.options.max_response
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[: limit + 1], False
        return b"".join(chunks), True

    def _answer(
        self,
        url: str,
        envelope: Envelope,
        message: protocol.TaskRequest,
        response: aiohttp.ClientResponse,
        body: bytes,
        complete: bool,
    ) -> NewRecord:
        status = response.status
        answered = f"POST {url} answered {status} {response.reason or ''}".rstrip()
        if 200 <= status < 300:
            if not complete:
                return self._failed(
                    envelope,
                    message,
                    "InvalidResponse",
                    f"{answered} with a body over {self.options.max_response} bytes "
                    "(PushOptions.max_response)",
                    retryable=False,
                )
            return self._completed(answered, envelope, message, response, body)
        text = f"{answered}: {self._excerpt(body)}" if body.strip() else answered
        if 300 <= status < 400:
            location = response.headers.get("location")
            text += (
                f" (redirects are not followed; Location: {location})"
                if location
                else " (redirects are not followed)"
            )
        retryable = status >= 500 or status in _RETRYABLE_4XX
        return self._failed(envelope, message, "HTTPStatusError", text, retryable=retryable)

    def _completed(
        self,
        answered: str,
        envelope: Envelope,
        message: protocol.TaskRequest,
        response: aiohttp.ClientResponse,
        body: bytes,
    ) -> NewRecord:
        output: Any = None
        if body.strip():
            try:
                # exact: a large integer stays an int here (and is refused below) instead
                # of being rounded to a float as a fast parser would
                output = loads_exact(body)
            except ValueError as exc:
                kind = response.headers.get("content-type", "no content-type")
                return self._failed(
                    envelope,
                    message,
                    "InvalidResponse",
                    f"{answered} with a body that is not JSON ({kind}; {exc}): "
                    f"{self._excerpt(body)}",
                    retryable=False,
                )
            problem = number_problem(output, "output")
            if problem is not None:
                return self._failed(
                    envelope, message, "InvalidResponse", f"{answered}: {problem}", retryable=False
                )
        try:
            return tasks.completed(self._codec, envelope, message, output)
        except EventValidationError as exc:  # JSON parsed is JSON; kept for a payload codec
            return self._failed(
                envelope, message, "InvalidResponse", f"{answered}: {exc}", retryable=False
            )

    def _failed(
        self,
        envelope: Envelope,
        message: protocol.TaskRequest,
        error_type: str,
        text: str,
        *,
        retryable: bool,
    ) -> NewRecord:
        log.debug("push attempt %s failed (%s): %s", envelope.id, error_type, text)
        return tasks.failed(self._codec, envelope, message, error_type, text, retryable=retryable)

    def _excerpt(self, body: bytes) -> str:
        limit = self.options.excerpt
        text = " ".join(body[: limit * 4].decode("utf-8", "replace").split())
        return text if len(text) <= limit else text[:limit] + "..."


# -- definitions, secrets, signatures -------------------------------------------------------


def _target(definition: TaskDef, environ: Mapping[str, str]) -> _Target:
    name = definition.name
    if definition.url is None:
        raise ConfigError(f"task {name!r} is not a push task (it has no url=)")
    parts = urlsplit(definition.url)
    try:
        parts.port  # noqa: B018 (a property that checks the port: ValueError when out of range)
    except ValueError as exc:
        raise ConfigError(f"push task {name!r}: url {definition.url!r}: {exc}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in definition.url)
    ):
        raise ConfigError(
            f"push task {name!r}: url {definition.url!r} is not an absolute http(s) URL"
        )
    if definition.secret_env is None:
        raise ConfigError(
            f"push task {name!r} names no secret_env=: every push is signed, give the "
            "environment variable that holds its whsec_... secret"
        )
    secret = environ.get(definition.secret_env)
    if not secret:
        raise ConfigError(
            f"push task {name!r}: environment variable {definition.secret_env} "
            "(its signing secret) is not set"
        )
    return _Target(definition, definition.url, Webhook(_secret_key(name, definition, secret)))


def _secret_key(name: str, definition: TaskDef, secret: str) -> bytes:
    """The key of a ``whsec_`` secret; its problem named, the secret itself never shown."""
    where = f"push task {name!r}: environment variable {definition.secret_env}"
    if not secret.startswith(_SECRET_PREFIX):
        raise ConfigError(f"{where} must hold a Standard Webhooks secret starting 'whsec_'")
    encoded = secret[len(_SECRET_PREFIX) :].strip()
    try:
        # strict (validate=True): the library's own decoder skips characters that are not
        # base64, so a typo would silently make another key
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ConfigError(f"{where}: the part after 'whsec_' is not base64") from None
    low, high = _SECRET_BYTES
    if not low <= len(key) <= high:
        raise ConfigError(
            f"{where}: the key is {len(key)} bytes; Standard Webhooks asks for {low} to {high}"
        )
    return key


def _signed_headers(signer: Webhook, attempt_id: str, body: bytes) -> dict[str, str]:
    now = int(time.time())
    signature = signer.sign(attempt_id, datetime.fromtimestamp(now, UTC), body.decode())
    return {
        "content-type": CONTENT_TYPE,
        "webhook-id": attempt_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature,
    }


_ERROR_NAMES: tuple[tuple[type[aiohttp.ClientError], str], ...] = (
    (aiohttp.ClientConnectorError, "ConnectError"),  # DNS, refused, TLS handshake
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError"),  # closed before answering
    (aiohttp.ClientPayloadError, "RemoteProtocolError"),  # a body cut short or malformed
    (aiohttp.ClientResponseError, "RemoteProtocolError"),  # a response that is not HTTP
    (aiohttp.ClientOSError, "ReadError"),  # reset or broken once connected
)
"""The names docs/protocol.md gives network failures (httpx's, which push used before),
first match wins; another aiohttp error keeps its own class name."""


def _error_name(exc: aiohttp.ClientError) -> str:
    for kind, name in _ERROR_NAMES:
        if isinstance(exc, kind):
            return name
    return type(exc).__name__


def _describe(exc: aiohttp.ClientError) -> str:
    """An aiohttp error in words: its message and, when there is one, the operating
    system's reason underneath (``Cannot connect to host ...`` names no errno), on one
    line (aiohttp's parser errors span several)."""
    # a response error's str() repeats the URL and quotes its message
    said = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    text = " ".join(said.split()) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    root: BaseException | None = None
    while cause is not None:
        root = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(root, OSError) and str(root) and str(root) not in text:
        return f"{text} ({type(root).__name__}: {root})"
    return text
