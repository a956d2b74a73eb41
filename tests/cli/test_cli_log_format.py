"""``--log-format json`` on a real ``overture run`` process: one JSON object per line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from cli_helpers import REPO_ROOT
from test_cli_run import APP, _env, _wait_for_text, overture


def test_run_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    log_path = tmp_path / "engine.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overture.cli",
                "run",
                APP,
                "--backend",
                url,
                "--log-format",
                "json",
            ],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_for_text(log_path, "engine", proc, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, log_path.read_text()
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()


def test_an_unknown_log_format_is_a_usage_error() -> None:
    done = overture("run", APP, "--log-format", "xml", "--backend", "sqlite:///x.db")
    assert done.returncode == 2
    assert "invalid --log-format 'xml'" in done.stderr
