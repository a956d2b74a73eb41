"""``overture serve`` (the HTTP API as its own process) and the API of ``overture run
--http`` (on the engine's loop, see ``overture.http.server``)."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    DEFAULT_BACKEND,
    EXIT_USAGE,
    BackendOption,
    CliError,
    LogFormatOption,
    TraceOption,
    check_log_format,
    handle_errors,
    refuse_memory,
    stderr_line,
    tracing,
)

if TYPE_CHECKING:  # imported when a command runs: `overture send` stays quick to start
    from prometheus_client import CollectorRegistry

    from ..app import App
    from ..http import ApiServer
    from ..ports import Backend
    from ..runtime.host import Host

DEFAULT_PORT = 8080
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MaxBodyOption = Annotated[
    int, typer.Option("--max-body", min=1, help="Largest request body accepted, in bytes (413).")
]


def parse_address(value: str, option: str = "--http") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) of ``--http`` (or ``option``).

    Raises:
        CliError: (usage) not of that form, or the port is not 0-65535.
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CliError(
            f"{option} {value!r} must look like HOST:PORT (e.g. 127.0.0.1:8080)", EXIT_USAGE
        )
    return host, int(port)


def listen(host: str, port: int) -> socket.socket:
    """The API's socket, bound now so that a port in use fails the command at once."""
    from ..http import bind

    return bind(host, port)


def engine_api(
    app: App,
    backend: Backend,
    host: Host,
    sock: socket.socket,
    *,
    max_body: int | None = None,
    metrics: CollectorRegistry | None = None,
) -> ApiServer:
    """The API server of ``overture run --http``: ready while ``host`` owns its
    partitions and consumes them (:attr:`Host.unready`); its ``/metrics`` includes the
    engine's ``metrics`` registry, if given."""
    from ..http import DEFAULT_MAX_BODY, ApiServer, create_api

    async def ready() -> str | None:
        return host.unready

    api = create_api(
        app,
        backend,
        ready=ready,
        max_body=max_body or DEFAULT_MAX_BODY,
        metrics_registry=metrics,
    )
    return ApiServer(api, sock, log_level="warning")


def register(cli: typer.Typer) -> None:
    """Add ``overture serve`` to the command line."""

    @cli.command("serve")
    @handle_errors
    def serve(
        app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="The app to serve.")],
        host: Annotated[
            str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = (
            DEFAULT_PORT
        ),
        backend: BackendOption = DEFAULT_BACKEND,
        max_body: MaxBodyOption = 1 << 20,
        log_level: Annotated[
            str, typer.Option(help=f"Logging level on stderr: {', '.join(LOG_LEVELS)}.")
        ] = "INFO",
        log_format: LogFormatOption = "text",
        trace: TraceOption = None,
    ) -> None:
        """Serve the HTTP API of MODULE:APP (events, instances, dead letters) until Ctrl-C
        or SIGTERM; any number of them can run next to the engines. See docs/http.md."""
        from .loading import load_app
        from .serve import configure_logging

        if log_level.upper() not in LOG_LEVELS:
            raise CliError(
                f"invalid --log-level {log_level!r} (choose from {', '.join(LOG_LEVELS)})",
                EXIT_USAGE,
            )
        log_format = check_log_format(log_format)
        refuse_memory(backend)
        app = load_app(app_path)
        sock = listen(host, port)
        configure_logging(log_level, log_format)
        try:
            with tracing(trace, f"{app.name}-api"):
                asyncio.run(_serve(app, backend, sock, max_body=max_body))
        except KeyboardInterrupt:  # only before the signal handlers are installed
            raise typer.Exit(130) from None


async def _serve(app: App, url: str, sock: socket.socket, *, max_body: int) -> None:
    from ..http import ApiServer, create_api
    from .serve import open_until_signal

    backend = await open_until_signal(url, None)
    if backend is None:
        sock.close()
        return
    try:
        server = ApiServer(create_api(app, backend, max_body=max_body), sock, log_level="warning")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        stderr_line(
            f"overture: HTTP API of app {app.name!r} on {url} at http://{server.address}; "
            "Ctrl-C to stop"
        )
        try:
            await server.serve()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        backend.close()
