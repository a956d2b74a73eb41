"""Engine behaviour found while building the CLI: a stopped engine exits promptly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import overture as ov

HANGING_APP = """
import time
from pathlib import Path

import overture as ov

app = ov.App("hang")


def slow() -> str:
    Path("step-started").touch()
    time.sleep(60)  # a step stuck on a slow service
    return "done"


@app.process(trigger="go")
async def proc(ctx: ov.Context, event: ov.Event) -> str:
    return await ctx.step(slow)
"""


def test_run_exits_promptly_on_sigterm_while_a_sync_step_hangs(tmp_path: Path) -> None:
    (tmp_path / "hanging_app.py").write_text(HANGING_APP)
    log_path = tmp_path / "engine.log"
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    command = [sys.executable, "-m", "overture.cli", "run", "hanging_app:app"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*command, "--backend", "sqlite:///hang.db", "--grace", "0.5"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "running; Ctrl-C to stop" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        with ov.Client(f"sqlite:///{tmp_path / 'hang.db'}") as client:
            client.send("go", {})
        while not (tmp_path / "step-started").exists():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

        proc.send_signal(signal.SIGTERM)
        # The grace is 0.5 s: a prompt exit takes well under 5 s. With the bug the process
        # lingers for the step's full 60 s, and wait() times out.
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
