"""Serving the API with uvicorn, on the caller's event loop.

``overture run --http`` serves it on the engine's own loop, as one more task: the API
reads and sends through an :class:`~overture.AsyncClient` whose calls do not block the
loop for long (sends are handed to the group committer's thread; SQLite reads are
index lookups), and readiness reads the host's state on the loop that changes it. A
thread with its own loop was rejected: it would share the one core the GIL gives the
process anyway, and every read of the host would have to cross threads.

The caller owns the signals: uvicorn's own handlers (which replace the process's and
re-raise the signal once it stopped) are left out, and :meth:`ApiServer.stop` asks the
server to stop.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ..errors import ConfigError

SHUTDOWN_GRACE = 3
"""Seconds requests in flight (a long poll) get to finish once the server stops."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, bound before anything else starts so a
    port in use fails the command at once (port 0: any free port).

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, ...).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the command that runs the server handles SIGINT/SIGTERM


class ApiServer:
    """uvicorn serving ``api`` on an already bound socket.

    Args:
        api: the app (:func:`~overture.http.create_api`).
        sock: from :func:`bind`; closed when the server stops.
        log_level: uvicorn's logging level (its access log is off).
    """

    def __init__(self, api: FastAPI, sock: socket.socket, *, log_level: str = "warning") -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        """``host:port`` the server listens on."""
        config = uvicorn.Config(
            api,
            log_level=log_level.lower(),
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            log_config=None,  # the process's logging configuration stays
        )
        self._server = _Server(config)
        self._api = api

    @property
    def started(self) -> bool:
        """Whether the server accepts connections."""
        return self._server.started

    async def serve(self) -> None:
        """Serve until :meth:`stop`."""
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        """Ask the server to stop: it stops accepting, gives requests in flight
        :data:`SHUTDOWN_GRACE` seconds, then :meth:`serve` returns. Task claims waiting
        in a long poll answer at once with what they have (the instance result polls
        are cut off after the grace)."""
        self._server.should_exit = True
        desk = getattr(self._api.state, "tasks", None)
        if desk is not None:
            desk.stop_polls()
