"""``overture dev``: development helpers; ``overture dev kafka start|stop|status`` runs a
real single-node Kafka broker on 127.0.0.1 (see :mod:`overture.devkafka`).

``start`` prints its progress on stderr and the bootstrap address as the last line of
stdout, so that ``BOOTSTRAP=$(overture dev kafka start | tail -1)`` works.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .common import handle_errors, stderr_line

EXIT_NOT_RUNNING = 3
"""``overture dev kafka status``: the broker does not run."""

dev = typer.Typer(help="Development helpers (a local Kafka broker).", no_args_is_help=True)
kafka = typer.Typer(
    help="A real single-node Kafka broker (KRaft) on 127.0.0.1, assembled with Maven and run "
    "with Java; its state lives in one directory.",
    no_args_is_help=True,
)
dev.add_typer(kafka, name="kafka")

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="OVERTURE_KAFKA_DIR",
        show_envvar=True,
        help="The broker's directory: jars, configuration, data, logs, pid "
        "[default: ./.overture/kafka].",
    ),
]


@kafka.command("start")
@handle_errors
def kafka_start(
    state_dir: StateDirOption = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Client port [default: a free one, kept if free]."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the broker to become ready.")
    ] = 120.0,
) -> None:
    """Start the broker (downloading it on first use) and print its bootstrap address."""
    from ..devkafka import start_broker

    result = start_broker(
        state_dir, port=port, timeout=timeout, progress=lambda line: stderr_line(line)
    )
    record = result.record
    if not result.started:
        stderr_line(
            f"the broker already runs (pid {record.pid}, up {_duration(record.started_at)})"
        )
    typer.echo(record.bootstrap)


@kafka.command("stop")
@handle_errors
def kafka_stop(
    state_dir: StateDirOption = None,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge", help="Also delete its data, logs and configuration (keeps the jars)."
        ),
    ] = False,
) -> None:
    """Stop the broker: SIGTERM (controlled shutdown), SIGKILL after 20 s."""
    from ..devkafka import stop_broker

    result = stop_broker(state_dir, purge=purge)
    if result.pid is None:
        typer.echo("the broker was not running" + ("; data purged" if purge else ""))
        return
    how = "killed (it ignored SIGTERM for 20 s)" if result.killed else "stopped"
    typer.echo(f"broker (pid {result.pid}) {how}" + ("; data purged" if purge else ""))


@kafka.command("status")
@handle_errors
def kafka_status(state_dir: StateDirOption = None) -> None:
    """Say whether the broker runs (exit 0) or not (exit 3)."""
    from ..devkafka import broker_status

    status = broker_status(state_dir)
    record = status.record
    if record is None:
        detail = (
            f" (the broker recorded as pid {status.stale_pid} has exited; "
            f"see {status.state_dir / 'broker.log'})"
            if status.stale_pid is not None
            else ""
        )
        typer.echo(f"not running{detail}")
        raise typer.Exit(EXIT_NOT_RUNNING)
    typer.echo(
        f"running: Kafka {record.kafka_version} on {record.bootstrap}, pid {record.pid}, "
        f"up {_duration(record.started_at)} (started in {record.startup_seconds:.1f} s)"
    )


def _duration(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
