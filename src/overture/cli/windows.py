"""``overture windows NAME``: the open windows of a stream operator and its late count."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from . import render
from .common import DEFAULT_BACKEND, BackendOption, handle_errors, open_client
from .loading import load_app


def register(cli: typer.Typer) -> None:
    """Add ``overture windows`` to the command line."""

    @cli.command("windows")
    @handle_errors
    def windows(
        name: Annotated[str, typer.Argument(metavar="NAME", help="The window's name.")],
        app_path: Annotated[
            str,
            typer.Option("--app", metavar="MODULE:APP", help="The app that declares the window."),
        ],
        key: Annotated[
            str | None, typer.Option("--key", "-k", help="Only this key's windows.")
        ] = None,
        json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        backend: BackendOption = DEFAULT_BACKEND,
    ) -> None:
        """Print the open windows of window NAME (their values so far) and how many
        events came too late for it."""
        app = load_app(app_path)
        with open_client(backend, app=app) as client:
            results = client.window(name, key)
            late = client.late_events(name)
        if json:
            for r in results:
                typer.echo(
                    render.dumps(
                        {
                            "key": r.key,
                            "start": r.start.isoformat(),
                            "end": r.end.isoformat(),
                            "values": r.values,
                        }
                    )
                )
            typer.echo(render.dumps({"late": late}))
            return
        console = render.make_console()
        if results:
            table = Table(title=f"open windows of {name}", title_justify="left")
            for column in ("key", "start", "end", "values"):
                table.add_column(column)
            for r in results:
                values = ", ".join(f"{k}={v!r}" for k, v in r.values.items())
                table.add_row(*render.cells(r.key, r.start.isoformat(), r.end.isoformat(), values))
            console.print(table)
        else:
            console.print(f"no open windows of {name}" + (f" for key {key!r}" if key else ""))
        console.print(f"late events: {late:,}")
