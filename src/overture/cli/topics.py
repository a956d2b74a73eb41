"""``overture topics``: a Kafka namespace's topics, their retention and cleanup policy, and
where those differ from what Overture would create for a ``--retention`` (the check an
engine makes when it starts, without starting one). Nothing is created or changed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..errors import ConfigError
from ..retention import describe_retention, parse_retention
from . import render
from .common import (
    DEFAULT_BACKEND,
    EXIT_USAGE,
    BackendOption,
    CliError,
    handle_errors,
    stderr_line,
)


def register(cli: typer.Typer) -> None:
    """Add ``overture topics`` to the command line."""

    @cli.command("topics")
    @handle_errors
    def topics(
        retention: Annotated[
            str,
            typer.Option(
                "--retention",
                metavar="DURATION",
                help="The engines' --retention to check the topics against (as for "
                "`overture run`).",
            ),
        ] = "7d",
        json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        backend: BackendOption = DEFAULT_BACKEND,
    ) -> None:
        """List the Kafka topics of the backend's namespace with their cleanup.policy and
        retention.ms, and report each that differs from what Overture creates for
        --retention (exit code 1; Overture never changes an existing topic)."""
        try:
            kept = parse_retention(retention)
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        if not backend.startswith("kafka://"):
            raise CliError(
                f"--backend {backend}: overture topics is for kafka:// backends (the embedded "
                "backends have no topics; their engine deletes what is past --retention)",
                EXIT_USAGE,
            )
        from ..backends.kafka.settings import parse
        from ..backends.kafka.topics import mismatches, topic_report

        settings = parse(backend, retention=kept)
        states = topic_report(settings)
        found = mismatches(settings, states)
        if json:
            for state in states:
                differs = sorted(m.name for m in found if m.topic == state.topic)
                typer.echo(
                    render.dumps(
                        {
                            "topic": state.topic,
                            "partitions": state.partitions,
                            "configs": state.configs,
                            "wanted": state.wanted,
                            "differs": differs,
                        }
                    )
                )
        elif not states:
            typer.echo(
                f"namespace {settings.namespace!r} has no topics yet: the first `overture "
                "run` (or client) creates them"
            )
        else:
            table = Table(
                title=f"topics of {settings.namespace} (--retention {describe_retention(kept)})",
                title_justify="left",
            )
            for column in ("topic", "partitions", "cleanup.policy", "retention.ms", "as created"):
                table.add_column(column)
            for state in states:
                wrong = [m for m in found if m.topic == state.topic]
                wanted = ", ".join(f"{m.name}={m.want}" for m in wrong)
                table.add_row(
                    *render.cells(
                        state.topic,
                        str(state.partitions),
                        state.configs.get("cleanup.policy", "?"),
                        state.configs.get("retention.ms", "?"),
                        f"no: {wanted}" if wrong else "yes",
                    )
                )
            render.make_console().print(table)
        for mismatch in found:
            stderr_line(f"warning: {mismatch}")
        if found:
            raise CliError(
                f"{len(found)} topic config(s) differ from what Overture creates for "
                f"--retention {describe_retention(kept)} (see the warnings above)"
            )
