"""The app of the task semantics tests (``test_task_semantics.py``), run by real
``overture run --no-tasks`` and ``overture worker`` subprocesses.

Each run of the task ``t.effect`` appends one line to ``$OVERTURE_TASK_EFFECTS`` (the
side effect an external service would see, never rolled back): the call's idempotency
key, the attempt, the worker's pid, the job and the call's step. What a run does besides
is chosen by the job's ``mode``:

- ``quick``: nothing;
- ``hang_once``: the first run of a call hangs (its worker is to be killed);
- ``slow``: sleeps ``seconds``;
- ``slow_first``: attempt 1 sleeps ``seconds`` (past its deadline), later ones ``then``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import overture as ov

app = ov.App("task-semantics")

EFFECTS_ENV = "OVERTURE_TASK_EFFECTS"


def effects(path: Path) -> list[tuple[str, int, int, str, int]]:
    """Every recorded run: (idempotency key, attempt, pid, job, step)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        key, attempt, pid, job, step = line.split(" ")
        rows.append((key, int(attempt), int(pid), job, int(step)))
    return rows


@app.task("t.effect")
def effect(data: dict[str, Any]) -> dict[str, Any]:
    info = ov.current_step()
    assert info is not None
    path = Path(os.environ[EFFECTS_ENV])
    line = f"{info.idempotency_key} {info.attempt} {os.getpid()} {data['job']} {data['step']}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    mode = data.get("mode", "quick")
    if mode == "hang_once":
        if [r[0] for r in effects(path)].count(info.idempotency_key) == 1:
            time.sleep(120)
    elif mode == "slow" or (mode == "slow_first" and info.attempt == 1):
        time.sleep(float(data["seconds"]))
    elif mode == "slow_first":
        time.sleep(float(data.get("then", 0)))
    return {"job": data["job"], "step": data["step"], "attempt": info.attempt}


@app.process(trigger="job.requested")
async def job(ctx: ov.Context, event: ov.Event) -> list[Any]:
    data = event.data
    retry = ov.Retry(max_attempts=5, initial_interval=timedelta(milliseconds=200))
    timeout = timedelta(seconds=data.get("timeout", 60))
    return [
        await ctx.call("t.effect", {**data, "step": step}, timeout=timeout, retry=retry)
        for step in range(data.get("calls", 1))
    ]
