"""``overture top``: a live view of a backend in the terminal (rich), refreshed every
second until Ctrl-C; ``--once`` prints one frame (for scripts and tests).

A frame reads only what any client can read from the store, so it works beside any
number of engines on any backend: instances by process and status, instances completed
and failed in the last minute (and, from the second frame on, the completion rate since
the previous one), and dead letters by source.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..client import Client
from ..protocol import Status
from . import render
from .common import DEFAULT_BACKEND, BackendOption, handle_errors, open_client


class Frames:
    """Builds successive frames of one client, remembering the previous counts (the rate
    between two frames is the change in completed instances over the time between them)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._previous: tuple[float, int] | None = None

    def frame(self) -> Group:
        client = self.client
        now = time.monotonic()
        counts = client.instance_counts()
        completed = sum(n for (_, status), n in counts.items() if status == Status.COMPLETED)
        since = datetime.now(UTC) - timedelta(minutes=1)
        minute = client.instance_activity(since=since, width=timedelta(minutes=1))
        recent_done = sum(row.completed for row in minute)
        recent_failed = sum(row.failed for row in minute)
        rate = "-"
        if self._previous is not None and now > self._previous[0]:
            per_second = (completed - self._previous[1]) / (now - self._previous[0])
            rate = f"{max(per_second, 0):,.1f}/s"
        self._previous = (now, completed)

        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold")
        summary.add_column()
        summary.add_row("completed now", rate)
        summary.add_row("completed, last minute", f"{recent_done:,}")
        summary.add_row("failed, last minute", f"{recent_failed:,}")
        parts: list[Table | Text] = [summary]
        parts.append(render.counts_table(counts, tuple(Status)) if counts else Text("no instances"))
        dead = Counter(d.source for d in client.dead_letters())
        if dead:
            table = Table(title="dead letters", title_justify="left")
            table.add_column("source")
            table.add_column("count", justify="right")
            for source, n in sorted(dead.items()):
                table.add_row(*render.cells(source, f"{n:,}"))
            parts.append(table)
        else:
            parts.append(Text("no dead letters"))
        return Group(*parts)


def register(cli: typer.Typer) -> None:
    """Add ``overture top`` to the command line."""

    @cli.command("top")
    @handle_errors
    def top(
        once: Annotated[
            bool, typer.Option("--once", help="Print one frame and exit (no live view).")
        ] = False,
        interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 1.0,
        backend: BackendOption = DEFAULT_BACKEND,
    ) -> None:
        """A live view of the backend: instances by status, throughput, dead letters.
        Ctrl-C quits."""
        from rich.live import Live

        with open_client(backend) as client:
            frames = Frames(client)
            console = render.make_console()
            if once:
                console.print(frames.frame())
                return
            try:
                with Live(frames.frame(), console=console, auto_refresh=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(frames.frame(), refresh=True)
            except KeyboardInterrupt:
                return
