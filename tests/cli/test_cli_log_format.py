"""``--log-format json`` on a real ``overture run`` process: one JSON object per line."""

from __future__ import annotations

import json
import os
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


LOGGING_APP = """
import logging
import time
from datetime import timedelta

import overture as ov

app = ov.App("logs")
log = logging.getLogger("shop.steps")


async def charge(order: str) -> str:
    log.warning("charging %s", order)
    return order


def slow(order: str) -> str:
    time.sleep(0.3)  # past its timeout: the engine logs it from outside the step
    return order


@app.process(trigger="order.placed")
async def fulfil(ctx: ov.Context, event: ov.Event) -> str:
    await ctx.step(charge, event.key)
    try:
        once = ov.Retry(max_attempts=1)
        await ctx.step(slow, event.key, timeout=timedelta(milliseconds=50), retry=once)
    except Exception:
        pass
    return "done"
"""


def test_json_lines_name_the_process_of_the_instance(tmp_path: Path) -> None:
    """A line logged inside a step, and the engine's own line about a step (its timeout,
    written outside the step), both carry ``process`` next to ``instance_id``."""
    (tmp_path / "logsapp.py").write_text(LOGGING_APP)
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    log_path = tmp_path / "engine.log"
    env = _env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = [sys.executable, "-m", "overture.cli"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*run, "run", "logsapp:app", "--backend", url, "--log-format", "json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_for_text(log_path, "engine", proc, timeout=30)
        sent = subprocess.run(
            [*run, "send", "order.placed", "--data", "{}", "--key", "o-7", "--backend", url],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        _wait_for_text(log_path, "overran its timeout", proc, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    inside = next(e for e in entries if e["message"] == "charging o-7")
    assert inside["process"] == "fulfil" and inside["step"].endswith("charge")
    assert inside["instance_id"] and inside["attempt"] == 1
    engine = next(e for e in entries if "overran its timeout" in e["message"])
    assert engine["process"] == "fulfil" and engine["instance_id"] == inside["instance_id"]
    assert engine["step"].endswith("slow") and engine["logger"].startswith("overture")


def test_an_unknown_log_format_is_a_usage_error() -> None:
    done = overture("run", APP, "--log-format", "xml", "--backend", "sqlite:///x.db")
    assert done.returncode == 2
    assert "invalid --log-format 'xml'" in done.stderr
