"""The ``overture`` command line: a typer app whose commands are thin shells over
:class:`overture.Client` and :class:`overture.Engine`.

Output conventions: tables and timelines go to stdout (``--json`` prints one JSON object
per line instead); progress and errors go to stderr; a user error is one ``error: ...``
line and exit code 1 (2 for a wrong command line), never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from .. import __version__
from ..client import ALL, Client
from ..errors import NotFound
from ..protocol import Status
from . import api, gc, render, top, topics, windows
from .common import (
    DEFAULT_BACKEND,
    EXIT_USAGE,
    BackendOption,
    CliError,
    LogFormatOption,
    TraceOption,
    check_log_format,
    handle_errors,
    normalize_option,
    open_client,
    refuse_memory,
    retentions,
    stderr_line,
    tracing,
)
from .dev import dev
from .loading import load_app
from .progress import progress
from .sending import parse_data, parse_lines, publish, read_data

cli = typer.Typer(
    name="overture",
    help="Overture: event-driven durable processes. Run an engine, send events, inspect "
    "and operate instances.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback only ever means a bug in Overture; print it plainly (no locals, which
    # could hold event data).
    pretty_exceptions_enable=False,
    # every subcommand inherits it: ``--broker`` (hidden) is read as ``--backend``
    context_settings={"token_normalize_func": normalize_option},
)
dlq = typer.Typer(help="Inspect, replay and delete the dead-letter queue.", no_args_is_help=True)
cli.add_typer(dlq, name="dlq")
cli.add_typer(dev, name="dev")
api.register(cli)  # overture serve
top.register(cli)  # overture top
windows.register(cli)  # overture windows (streams)
topics.register(cli)  # overture topics (Kafka)
gc.register(cli)  # overture gc (retention on demand)

STATUSES = tuple(Status)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

AppPath = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="MODULE:APP",
        help="Validate events of the types this app defines (and derive their keys).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
LogLevel = Annotated[str, typer.Option(help=f"Logging level on stderr: {', '.join(LOG_LEVELS)}.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"overture {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Overture: event-driven durable processes."""


# -- run -----------------------------------------------------------------------------------


@cli.command()
@handle_errors
def run(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="The app to run.")],
    backend: BackendOption = DEFAULT_BACKEND,
    cache_size: Annotated[
        int, typer.Option(min=0, help="Live instances kept in memory (0: replay always).")
    ] = 10_000,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most log records per engine iteration (group commit).")
    ] = 500,
    threads: Annotated[
        int,
        typer.Option(
            min=1, help="Threads running sync steps and handlers (how many block at once)."
        ),
    ] = 16,
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions of a new log (an existing log keeps its count)."),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds running steps get to finish when stopping."),
    ] = 5.0,
    http: Annotated[
        str | None,
        typer.Option(
            "--http", metavar="HOST:PORT", help="Also serve the HTTP API (docs/http.md) here."
        ),
    ] = None,
    max_body: api.MaxBodyOption = 1 << 20,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT",
            help="Also serve Prometheus metrics at http://HOST:PORT/metrics "
            "(docs/observability.md).",
        ),
    ] = None,
    no_tasks: Annotated[
        bool,
        typer.Option(
            "--no-tasks",
            help="Do not run the app's tasks in this process (leave them to `overture worker`).",
        ),
    ] = False,
    task_concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Task attempts the in-process worker runs at once (as `overture worker "
            "--concurrency`).",
        ),
    ] = 8,
    max_open_tasks: Annotated[
        int,
        typer.Option(
            "--max-open-tasks",
            min=1,
            help="Most open task attempts per queue; further calls wait, in order.",
        ),
    ] = 10_000,
    retention: Annotated[
        str,
        typer.Option(
            "--retention",
            metavar="DURATION",
            help="How long finished instances are kept before the engine deletes them "
            "(e.g. 12h, 7d; 0: none; forever). docs/retention.md.",
        ),
    ] = "7d",
    dlq_retention: Annotated[
        str,
        typer.Option(
            "--dlq-retention",
            metavar="DURATION",
            help="How long dead letters are kept before the engine deletes them (same "
            "forms as --retention; default forever: until replayed or deleted).",
        ),
    ] = "forever",
    log_level: LogLevel = "INFO",
    log_format: LogFormatOption = "text",
    trace: TraceOption = None,
) -> None:
    """Run an engine for MODULE:APP until Ctrl-C or SIGTERM, then drain and exit 0.

    The app's tasks (@app.task with a function) run in the same process too, unless
    --no-tasks."""
    from ..runtime.options import EngineOptions
    from .serve import configure_logging, serve

    kept, letters_kept = retentions(retention, dlq_retention)
    _check_log_level(log_level)
    log_format = check_log_format(log_format)
    refuse_memory(backend)
    address = None if http is None else api.parse_address(http)
    metrics_address = None if metrics is None else api.parse_address(metrics, "--metrics")
    app = load_app(app_path)
    sock = None if address is None else api.listen(*address)
    # After loading: a command line that fails leaves the process's logging untouched.
    configure_logging(log_level, log_format)
    try:
        with tracing(trace, app.name) as traced:
            asyncio.run(
                serve(
                    app,
                    backend,
                    options=EngineOptions(
                        cache_size=cache_size,
                        batch_size=batch_size,
                        threads=threads,
                        max_open_tasks_per_queue=max_open_tasks,
                        retention=kept,
                        dlq_retention=letters_kept,
                    ),
                    partitions=partitions,
                    grace=grace,
                    http=sock,
                    max_body=max_body,
                    metrics=metrics_address,
                    tasks=not no_tasks,
                    task_concurrency=task_concurrency,
                    trace=traced,
                )
            )
    except KeyboardInterrupt:  # only before the signal handlers are installed
        raise typer.Exit(130) from None


def _check_log_level(log_level: str) -> None:
    if log_level.upper() not in LOG_LEVELS:
        raise CliError(
            f"invalid --log-level {log_level!r} (choose from {', '.join(LOG_LEVELS)})", EXIT_USAGE
        )


# -- worker --------------------------------------------------------------------------------


@cli.command()
@handle_errors
def worker(
    app_path: Annotated[
        str, typer.Argument(metavar="MODULE:APP", help="The app whose tasks to run.")
    ],
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            metavar="QUEUE",
            help="A queue to serve (repeat for several; default: the queues of the app's "
            "tasks that have a function).",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Task attempts run at once (and threads for sync tasks).")
    ] = 8,
    lease: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds an attempt stays this worker's without a heartbeat (a killed "
            "worker's attempts go to another worker after this).",
        ),
    ] = 30.0,
    grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds running attempts get to finish when stopping."),
    ] = 5.0,
    backend: BackendOption = DEFAULT_BACKEND,
    log_level: LogLevel = "INFO",
    log_format: LogFormatOption = "text",
    trace: TraceOption = None,
) -> None:
    """Run the task functions of MODULE:APP on the attempts engines publish, until
    Ctrl-C or SIGTERM, then drain and exit 0. Run as many as you like."""
    from ..worker import runnable
    from .serve import configure_logging
    from .working import work

    _check_log_level(log_level)
    log_format = check_log_format(log_format)
    refuse_memory(backend)
    app = load_app(app_path)
    if not queue and not any(runnable(t) for t in app.tasks):
        raise CliError(
            f"app {app.name!r} ({app_path}) defines no task with a function or a URL, so "
            "this worker would have nothing to run: define one with @app.task, or name the "
            "queues to serve with --queue",
            EXIT_USAGE,
        )
    if queue is not None and not all(queue):
        raise CliError("--queue needs a non-empty queue name", EXIT_USAGE)
    configure_logging(log_level, log_format)
    try:
        with tracing(trace, f"{app.name}-worker"):
            asyncio.run(
                work(
                    app,
                    backend,
                    queues=queue or None,
                    concurrency=concurrency,
                    lease=lease,
                    grace=grace,
                )
            )
    except KeyboardInterrupt:  # only before the signal handlers are installed
        raise typer.Exit(130) from None


# -- send ----------------------------------------------------------------------------------


@cli.command()
@handle_errors
def send(
    event_type: Annotated[
        str | None, typer.Argument(metavar="TYPE", help="The event type, e.g. order.placed.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help='The event data: a JSON object, "@FILE" to read it from a file, or "-" '
            "to read it from stdin (for data too big for a command line).",
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="The partition / correlation key.")
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            help='Publish JSON lines {"type", "data", "key"} from a file ("-": stdin); '
            "the whole file is validated first.",
        ),
    ] = None,
    app_path: AppPath = None,
    reserved: Annotated[
        bool,
        typer.Option(
            "--reserved",
            help="Allow control event types (overture.*), e.g. to operate the engine by hand.",
        ),
    ] = False,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Publish one event (prints its id), or a file of events (prints the count)."""
    if file is not None and (event_type is not None or data is not None or key is not None):
        raise CliError("--file cannot be combined with TYPE, --data or --key", EXIT_USAGE)
    if file is None and event_type is None:
        raise CliError("give an event TYPE (with --data) or --file", EXIT_USAGE)
    app = None if app_path is None else load_app(app_path)
    if file is None:
        assert event_type is not None
        payload = parse_data(read_data(data)) if data is not None else {}
        with open_client(backend, app=app, must_exist=False) as client:
            typer.echo(client.send(event_type, payload, key=key, reserved=reserved))
        if key is None and app is None:
            stderr_line(
                "note: sent without a key, so no instance waiting for it (ctx.wait_for) can "
                "receive it; pass --key, or --app MODULE:APP to derive the key from the data"
            )
        return
    lines = _read_lines(file)
    with open_client(backend, app=app, must_exist=False) as client:
        envelopes = parse_lines(lines, client, reserved=reserved)
        count = publish(client, envelopes, reserved=reserved)
    typer.echo(f"published {count} event{'s' if count != 1 else ''}")


def _read_lines(file: str) -> list[str]:
    # Split on "\n" only: str.splitlines also splits on U+2028, U+2029, U+0085 and other
    # separators, which JSON allows unescaped inside strings (a trailing "\r" is JSON
    # whitespace, so CRLF files still parse).
    try:
        if file == "-":
            return sys.stdin.read().split("\n")
        with open(file, encoding="utf-8", newline="") as handle:
            return handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise CliError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from None


# -- events --------------------------------------------------------------------------------


@cli.command()
@handle_errors
def events(
    event_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Only events of this type.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    json: JsonFlag = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most N events (default 1000; unlimited with --follow)."),
    ] = None,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """List the events in the log, oldest first per partition; --follow tails it."""
    with open_client(backend) as client:
        if not follow:
            most = limit or 1000
            found = client.events(type=event_type, limit=most + 1)
            if len(found) > most:
                found = found[:most]
                stderr_line(_cut_note(client, most, event_type))
            if json:
                for event in found:
                    typer.echo(render.dumps(render.event_dict(event)))
            else:
                render.make_console().print(render.events_table(found))
            return
        console = render.make_console()
        shown = 0
        try:
            for event in client.follow(type=event_type):
                if json:
                    typer.echo(render.dumps(render.event_dict(event)))
                    sys.stdout.flush()
                else:
                    console.print(render.event_line(event))
                shown += 1
                if limit is not None and shown >= limit:
                    return
        except KeyboardInterrupt:
            return


def _cut_note(client: Client, shown: int, event_type: str | None) -> str:
    """The stderr line of an events listing cut at its limit."""
    if event_type is not None:  # counting them would mean reading the whole log
        return (
            f"showing the first {shown:,} events of type {event_type!r}; there are more: "
            "use --limit"
        )
    log = client.backend.log
    # the log's size, without reading it (on Kafka, records already removed by retention
    # are counted too, hence "about")
    total = sum(log.end_offset(p) for p in range(log.partitions))
    return f"showing {shown:,} of about {total:,} events; use --limit for more"


# -- instances -----------------------------------------------------------------------------


@cli.command()
@handle_errors
def instances(
    process: Annotated[str | None, typer.Option(help="Only instances of this process.")] = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only instances in this status: {', '.join(STATUSES)}.")
    ] = None,
    json: JsonFlag = False,
    limit: Annotated[int, typer.Option(min=1, help="At most N instances, oldest first.")] = 1000,
    count: Annotated[
        bool,
        typer.Option("--count", help="How many instances each process has in each status."),
    ] = False,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """List process instances (or count them by process and status with --count)."""
    if status is not None and status not in STATUSES:
        raise CliError(
            f"invalid --status {status!r} (choose from {', '.join(STATUSES)})", EXIT_USAGE
        )
    if count:
        with open_client(backend) as client:
            counts = client.instance_counts(process=process)
        if status is not None:
            counts = {k: n for k, n in counts.items() if k[1] == status}
        if json:
            for (name, state), n in counts.items():
                typer.echo(render.dumps({"process": name, "status": state, "count": n}))
        elif not counts:
            typer.echo("no instances")
        else:
            render.make_console().print(render.counts_table(counts, STATUSES))
        return
    with open_client(backend) as client:
        found = client.instances(process=process, status=status, limit=limit + 1)
        if len(found) > limit:
            found = found[:limit]
            total = len(client.instances(process=process, status=status, limit=ALL))
            stderr_line(
                f"showing {limit:,} of {total:,} instances (oldest first); use --limit "
                "for more, or --count for a summary"
            )
    if json:
        for instance in found:
            typer.echo(render.dumps(render.instance_dict(instance)))
    else:
        render.make_console().print(render.instances_table(found))


@cli.command()
@handle_errors
def show(
    instance_id: Annotated[
        str, typer.Argument(metavar="ID", help="Instance id (or a unique prefix of 6+ chars).")
    ],
    json: JsonFlag = False,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Show one instance and its journal as a timeline."""
    with open_client(backend) as client:
        instance = client.instance(instance_id)
        journal = client.journal(instance.id)
    if json:
        typer.echo(render.dumps({"instance": render.instance_dict(instance), "journal": journal}))
        return
    console = render.make_console()
    console.print(render.instance_header(instance))
    console.print()
    console.print(render.timeline_table(journal))


@cli.command()
@handle_errors
def cancel(
    instance_id: Annotated[str, typer.Argument(metavar="ID", help="Instance id (or prefix).")],
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Ask the engine to cancel an unfinished instance."""
    with open_client(backend) as client:
        instance = client.instance(instance_id)
        request = client.cancel(instance.id)
    typer.echo(
        f"cancellation of instance {instance.id} ({instance.process}, "
        f"{render.keyed(instance.key)}, "
        f"{instance.status}) requested as event {request}; the engine applies it when it "
        "reads the request"
    )


# -- dlq -----------------------------------------------------------------------------------


@dlq.command("list")
@handle_errors
def dlq_list(json: JsonFlag = False, backend: BackendOption = DEFAULT_BACKEND) -> None:
    """List dead letters: reason, source, attempts and the original event."""
    with open_client(backend) as client:
        letters = client.dead_letters()
    if json:
        for letter in letters:
            typer.echo(render.dumps(render.dead_letter_dict(letter)))
    elif not letters:
        typer.echo("the dead-letter queue is empty")
    else:
        render.make_console().print(render.dead_letters_table(letters))


@dlq.command("replay")
@handle_errors
def dlq_replay(
    letter_id: Annotated[str | None, typer.Argument(metavar="ID", help="Dead letter id.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Ask the engine to retry a dead letter (or all of them)."""
    if letter_id is not None and all_:
        raise CliError("give a dead letter ID or --all, not both", EXIT_USAGE)
    if letter_id is None and not all_:
        raise CliError("give a dead letter ID, or --all", EXIT_USAGE)
    with open_client(backend) as client:
        if letter_id is not None:
            request = client.replay_dead_letter(letter_id)
            typer.echo(f"replay of dead letter {letter_id} requested as event {request}")
            return
        count = 0
        letters = client.dead_letters()
        with progress(len(letters), "requesting replays") as advance:
            for letter in letters:
                advance(1)
                try:
                    client.replay_dead_letter(letter.id)
                except NotFound:
                    continue  # replayed (and removed) by the engine meanwhile
                count += 1
    typer.echo(f"replay of {count} dead letter{'s' if count != 1 else ''} requested")


@dlq.command("delete")
@handle_errors
def dlq_delete(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID...", help="Dead letter ids.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every dead letter.")] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (logged by whoever deletes them).")
    ] = None,
    backend: BackendOption = DEFAULT_BACKEND,
) -> None:
    """Delete dead letters for good: all the IDs given, or none if one is unknown."""
    if letter_ids and all_:
        raise CliError("give dead letter IDs or --all, not both", EXIT_USAGE)
    if not letter_ids and not all_:
        raise CliError("give dead letter IDs, or --all", EXIT_USAGE)
    with open_client(backend) as client:
        outcome = client.delete_dead_letters(letter_ids or None, all=all_, reason=reason)
    count = len(outcome.ids)
    letters = f"{count} dead letter{'s' if count != 1 else ''}"
    if outcome.done:
        typer.echo(f"deleted {letters}" + (f": {', '.join(outcome.ids)}" if count else ""))
    else:
        typer.echo(
            f"deletion of {letters} requested from their engines "
            f"(events {', '.join(outcome.requests)}); each engine deletes its partition's "
            "in one transaction"
        )


# -- demo ----------------------------------------------------------------------------------


@cli.command()
@handle_errors
def demo(
    payment_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds an order waits for its payment.")
    ] = 2.0,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="Backend URL to keep the demo's data in, sqlite:///demo.db or "
            "kafka://host:port/namespace (default: a temporary database; "
            "OVERTURE_BACKEND is ignored so the demo never writes into your database).",
        ),
    ] = None,
) -> None:
    """Run the order example end to end and show what happened."""
    from .demo import run_demo

    console = render.make_console(pipe_width=120)
    ok = asyncio.run(run_demo(console, payment_timeout=payment_timeout, backend=backend))
    if not ok:
        raise typer.Exit(1)
