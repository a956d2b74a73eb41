"""Long CLI operations show a progress bar on a terminal and nothing when piped:
``overture send --file`` and ``overture dlq replay --all`` as real processes, their stderr
a pseudo-terminal or a pipe."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from cli_helpers import REPO_ROOT

import overture as ov
from overture.testing import Harness

EVENTS = 2500  # more than one chunk of send_many


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    env.update(NO_COLOR="1", COLUMNS="100", TERM="xterm")
    return env


def _run(args: list[str], *, terminal: bool) -> tuple[int, str, str]:
    """``overture ARGS``; returns (exit code, stdout, stderr), stderr from a pty if asked."""
    command = [sys.executable, "-m", "overture.cli", *args]
    if not terminal:
        done = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=slave)  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    os.close(master)
    return code, out, seen.decode(errors="replace")


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(
            json.dumps({"type": "thing.happened", "data": {"n": n}}) + "\n" for n in range(EVENTS)
        )
    )
    return path


def test_send_file_shows_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = ["send", "--file", str(_file(tmp_path)), "--backend", url]
    code, out, err = _run(args, terminal=True)
    assert code == 0, err
    assert out == f"published {EVENTS} events\n"
    assert "publishing" in err and f"{EVENTS}/{EVENTS}" in err
    code, out, err = _run(args, terminal=False)
    assert code == 0, err
    assert out == f"published {EVENTS} events\n"
    assert err == ""


def test_dlq_replay_all_shows_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with ov.Client(url) as client:
        for n in range(3):
            client.send_raw(b"not json %d" % n)

    # an engine pass dead-letters them
    async def drain() -> None:
        async with Harness(ov.App("p"), url) as h:
            await h.idle()

    asyncio.run(drain())
    code, out, err = _run(["dlq", "replay", "--all", "--backend", url], terminal=True)
    assert code == 0, err
    assert out == "replay of 3 dead letters requested\n"
    assert "requesting replays" in err and "3/3" in err
    code, out, err = _run(["dlq", "replay", "--all", "--backend", url], terminal=False)
    assert code == 0 and err == "", err
