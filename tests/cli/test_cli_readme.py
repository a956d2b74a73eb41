"""The README's twenty lines and commands, run exactly as written, in real processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import REPO_ROOT

SECTION = re.compile(r"## Twenty lines\n+```python\n(.*?)```\n+```bash\n(.*?)```", re.S)


def _readme() -> tuple[str, list[list[str]]]:
    """The Python block and the command lines (comments and ``&`` stripped)."""
    match = SECTION.search((REPO_ROOT / "README.md").read_text())
    assert match, "the README's 'Twenty lines' section changed shape"
    commands = [shlex.split(line, comments=True) for line in match.group(2).splitlines()]
    return match.group(1), [[a for a in c if a != "&"] for c in commands if c]


def _overture(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    assert args[0] == "overture"
    done = subprocess.run(
        [sys.executable, "-m", "overture.cli", *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_the_readme_example_works_as_written(tmp_path: Path) -> None:
    code, commands = _readme()
    (tmp_path / "shop.py").write_text(code)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER", "PYTHONPATH")
    }
    env |= {"NO_COLOR": "1", "COLUMNS": "200"}
    run, *sends, listing = commands
    assert run[:2] == ["overture", "run"] and listing == ["overture", "instances"]
    log_path = tmp_path / "engine.log"
    with log_path.open("w") as log:
        engine = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", *run[1:]],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "running; Ctrl-C to stop" not in log_path.read_text():
            assert engine.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        for send in sends:
            _overture(send, tmp_path, env)
        while True:
            [instance] = map(
                json.loads, _overture([*listing, "--json"], tmp_path, env).split("\n")[:-1]
            )
            if instance["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (instance["key"], instance["status"], instance["result"]) == (
            "o1",
            "completed",
            "shipped",
        ), log_path.read_text()
        assert "shipped" in _overture(listing, tmp_path, env)
    finally:
        engine.send_signal(signal.SIGINT)
        assert engine.wait(timeout=30) == 0, log_path.read_text()
