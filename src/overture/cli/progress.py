"""Progress bars of long CLI operations (``send --file``, ``dlq replay --all``), drawn with
``rich.progress`` on stderr only when stderr is a terminal: piped or redirected output stays
exactly what it was (stdout is never touched)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` steps; yields ``advance(n)``. Draws nothing unless stderr is a
    terminal (and nothing for fewer than two steps: there is nothing to follow)."""
    if total < 2 or not sys.stderr.isatty():
        yield lambda n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
