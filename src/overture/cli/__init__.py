"""The ``overture`` command line (typer + rich).

``main`` is the console script; ``cli`` is the typer app (``typer.testing.CliRunner``
invokes it in tests). See ``docs/cli.md`` for every command.
"""

from __future__ import annotations

from .app import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``overture`` console script."""
    try:
        cli(prog_name="overture")
    except BrokenPipeError:
        # `overture events | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and exit quietly.
        import os
        import sys

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
