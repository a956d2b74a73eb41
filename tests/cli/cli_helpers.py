"""Helpers of the CLI tests (a module, not the conftest, so that tests can import them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner, Result

import overture as ov
from overture.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[2]


class Invoke:
    """Runs ``overture ARGS --backend URL`` in-process, with colours off and a wide console."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = CliRunner(
            env={
                "NO_COLOR": "1",
                "COLUMNS": "250",
                "OVERTURE_BACKEND": None,
                "OVERTURE_BROKER": None,
            }
        )

    def __call__(self, *args: str, input: str | None = None, backend: bool = True) -> Result:
        argv = [*args, "--backend", self.url] if backend else list(args)
        return self.runner.invoke(cli, argv, input=input)


def ok(result: Result) -> str:
    """Assert a command succeeded; returns its stdout."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result.stdout


def failed(result: Result, code: int = 1) -> str:
    """Assert a command failed *cleanly*: exit ``code``, one ``error:`` line on stderr, no
    traceback. Returns that line."""
    # A crash also exits 1, but CliRunner then records the exception itself.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def instance_for(client: ov.Client, event_id: str, timeout: float = 20.0) -> ov.Instance:
    """The instance a trigger event started (polls: an engine elsewhere starts it)."""
    deadline = time.monotonic() + timeout
    while True:
        for instance in client.instances():
            if instance.trigger_id == event_id:
                return instance
        assert time.monotonic() < deadline, f"no instance for event {event_id}"
        time.sleep(0.02)


def spawn(*args: str) -> subprocess.Popen[str]:
    """``overture ARGS`` as a process of its own (text pipes, colours off), for tests of
    a command as users run it, a kill -9 included."""
    return subprocess.Popen(
        [sys.executable, "-m", "overture.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1", "OVERTURE_BACKEND": ""},
    )
