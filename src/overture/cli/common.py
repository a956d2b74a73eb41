"""What every command shares: the ``--backend`` option, error reporting, opening a client.

User errors never end in a traceback: :func:`handle_errors` turns every
:class:`~overture.OvertureError` (and the few other errors a user can cause, such as a bad
path) into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer

from ..app import App
from ..backends import DEFAULT_URL
from ..client import Client
from ..errors import ConfigError, OvertureError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 1
"""The command failed (bad input, unknown instance, engine busy, ...)."""
EXIT_USAGE = 2
"""The command line itself is wrong (same code as click's usage errors)."""

BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        # OVERTURE_BROKER: its name until "broker" came to mean the Kafka server only,
        # still read (after OVERTURE_BACKEND) so existing scripts keep working
        envvar=["OVERTURE_BACKEND", "OVERTURE_BROKER"],
        help="Backend URL: sqlite:///relative.db, sqlite:////absolute.db or "
        "kafka://host:port/namespace [env var: OVERTURE_BACKEND].",
        show_envvar=False,
    ),
]
"""The ``--backend`` option every command takes."""

LEGACY_OPTIONS = {"broker": "backend"}
"""Option names that older releases used, accepted as aliases of the new ones but not
shown in the help (``--broker`` is ``--backend``)."""


def normalize_option(name: str) -> str:
    """Click's ``token_normalize_func``: an option name an older release used becomes
    today's (so ``--broker URL`` and ``--broker=URL`` keep working)."""
    return LEGACY_OPTIONS.get(name, name)


DEFAULT_BACKEND = DEFAULT_URL


class CliError(ConfigError):
    """An error of the command line, reported as one line with its own exit code.

    Args:
        message: the line to print.
        exit_code: :data:`EXIT_USAGE` for a wrong command line, else :data:`EXIT_ERROR`.
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``exit_code``."""
    # One physical line, so that log scrapers and `2>&1 | tail -1` see the whole story.
    line = " ".join(str(message).split())
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(exit_code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so that user errors end as one line on stderr, not a traceback.

    Programming errors (anything else) still raise: hiding them would hide bugs.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as error:
            fail(str(error), error.exit_code)
        except OvertureError as error:
            fail(str(error))
        except OSError as error:  # unreadable --file, full disk, ...
            if error.filename is not None:
                fail(f"{error.filename}: {error.strerror or error}")
            fail(str(error))

    return wrapper


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite:///`` URL names, or ``None`` for other schemes."""
    prefix = "sqlite:///"
    return url[len(prefix) :] if url.startswith(prefix) else None


def refuse_memory(url: str) -> None:
    """Refuse a ``memory://`` backend: it lives in one process, and every ``overture``
    command is its own process, so what it sends is lost when it exits and what it reads
    is always empty (``overture demo`` runs everything in one process and may use it).

    Raises:
        CliError: the URL is a memory backend.
    """
    if url.startswith("memory:"):
        raise CliError(
            f"--backend {url} keeps events in this one process's memory, and each overture "
            "command is its own process: the events would be lost when it exits; use "
            "sqlite:///file.db or kafka://host:port/namespace (memory:// is for tests "
            "and `overture demo`)",
            EXIT_USAGE,
        )


def open_client(url: str, *, app: App | None = None, must_exist: bool = True) -> Client:
    """A client on ``url``.

    Args:
        url: the backend URL.
        app: validate sent events against this app's contracts.
        must_exist: refuse to *create* an embedded database. Commands that only read or
            operate existing state set it, so that a typo in ``--backend`` (or running from
            the wrong directory) says so instead of showing an empty, brand-new database.
    """
    refuse_memory(url)
    path = sqlite_path(url)
    if must_exist and path and not os.path.exists(path):
        raise CliError(
            f"no Overture database at {path!r} (start one with `overture run`, or pass "
            "--backend / set OVERTURE_BACKEND)"
        )
    return Client(url, app=app)


def stderr_line(message: str) -> None:
    """Print an informational line on stderr (stdout stays machine-readable)."""
    print(message, file=sys.stderr, flush=True)


# -- --log-format (run, serve, worker) -------------------------------------------------------

LOG_FORMATS = ("text", "json")
"""The values ``--log-format`` accepts (json: :mod:`overture.observe.logs`)."""

LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="How log lines on stderr look: text, or json (one JSON object per line, with "
        "instance_id, step, trace_id and span_id when known; docs/observability.md).",
    ),
]
"""The ``--log-format`` option of the commands that run something (run, serve, worker)."""


def check_log_format(log_format: str) -> str:
    """``log_format`` in lower case, or a usage error naming the choices."""
    if log_format.lower() not in LOG_FORMATS:
        raise CliError(
            f"invalid --log-format {log_format!r} (choose from {', '.join(LOG_FORMATS)})",
            EXIT_USAGE,
        )
    return log_format.lower()


# -- --trace (run, serve, worker) ------------------------------------------------------------

TraceOption = Annotated[
    bool | None,
    typer.Option(
        "--trace/--no-trace",
        help="OpenTelemetry traces, configured by the OTEL_* variables (default: on when "
        "OTEL_TRACES_EXPORTER or an OTEL_EXPORTER_OTLP_*ENDPOINT is set; needs "
        "overture[otel]; docs/observability.md).",
        show_default=False,
    ),
]
"""The ``--trace/--no-trace`` option of the commands that run something."""

_TRACE_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def trace_wanted(flag: bool | None) -> bool:
    """Whether to trace: ``--trace`` / ``--no-trace``, else the environment (an exporter
    or an OTLP endpoint set, ``OTEL_TRACES_EXPORTER`` not ``none``, ``OTEL_SDK_DISABLED``
    not ``true``). Read without importing OpenTelemetry."""
    if flag is not None:
        return flag
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in _TRACE_VARIABLES)


@contextlib.contextmanager
def tracing(flag: bool | None, service_name: str) -> Iterator[bool]:
    """Set the global tracer provider from the ``OTEL_*`` variables for the block when
    tracing is wanted, and flush its spans at the end; yields whether it traces.

    Raises:
        CliError: tracing is asked for and OpenTelemetry is not installed, or an
            ``OTEL_*`` value is not supported.
    """
    if not trace_wanted(flag):
        yield False
        return
    try:
        from ..observe import tracing as otel
    except ImportError as error:
        raise CliError(
            f"tracing was asked for (--trace or OTEL_* variables) but OpenTelemetry is not "
            f"installed ({error}): pip install 'overture[otel]'",
            EXIT_USAGE,
        ) from None
    try:
        provider = otel.configure(service_name=service_name)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    try:
        yield True
    finally:
        otel.shutdown(provider)


def retentions(retention: str, dlq_retention: str) -> tuple[timedelta | None, timedelta | None]:
    """``--retention`` and ``--dlq-retention`` parsed (``overture run``, ``overture gc``).

    Raises:
        CliError: either is not a retention (exit code 2, the accepted forms named).
    """
    from ..retention import parse_retention

    try:
        return (
            parse_retention(retention),
            parse_retention(dlq_retention, option="--dlq-retention"),
        )
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
