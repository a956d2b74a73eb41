"""The app of the worker tests, importable by an ``overture worker`` subprocess
(``tests.tasks.workerapp:app``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import overture as ov

app = ov.App("workers")

GATE = threading.Event()
"""``t.gated`` waits for it (set by the test that holds a slot with it)."""
RUNNING = {"now": 0, "most": 0}
_lock = threading.Lock()


@app.task("t.echo")
def echo(value: Any) -> Any:
    return {"echo": value}


@app.task("t.async_echo")
async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return {"async": value}


def _whoami() -> list[Any]:
    info = ov.current_step()
    assert info is not None, "no current_step() in a task function"
    return [info.idempotency_key, info.attempt, info.instance_id, info.name]


@app.task("t.whoami")
def whoami(value: Any) -> Any:
    """The attempt's ``ov.current_step()`` (a sync task: run in a thread)."""
    return _whoami()


@app.task("t.async_whoami")
async def async_whoami(value: Any) -> Any:
    """The same, on the loop (across a suspension)."""
    await asyncio.sleep(0.01)
    return _whoami()


@app.task("t.fail")
def fail(value: Any) -> Any:
    raise ValueError(f"cannot {value}")


@app.task("t.terminal")
async def terminal(value: Any) -> Any:
    raise ov.TerminalError("never again")


@app.task("t.not_json")
def not_json(value: Any) -> Any:
    return {"when": object()}


@app.task("t.counted")
def counted(seconds: float) -> str:
    """Sleeps, counting how many run at once."""
    with _lock:
        RUNNING["now"] += 1
        RUNNING["most"] = max(RUNNING["most"], RUNNING["now"])
    try:
        time.sleep(seconds)
    finally:
        with _lock:
            RUNNING["now"] -= 1
    return "slept"


@app.task("t.gated")
def gated(value: Any) -> str:
    GATE.wait(30)
    return "released"


@app.task("t.sleep")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@app.task("t.side_effect", queue="effects")
def side_effect(value: Any) -> str:
    """Appends a line to ``$OVERTURE_TEST_EFFECTS`` (the side effect the kill -9 test
    counts); the first run then hangs, so that the test can kill its worker."""
    path = os.environ["OVERTURE_TEST_EFFECTS"]
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    with open(path) as file:
        runs = len(file.readlines())
    if runs == 1:
        time.sleep(120)
    return f"run {runs}"


# a push task whose endpoint refuses connections (nothing listens on port 9); its secret
# is set here so that every process importing the app (a worker subprocess too) has it
PUSH_SECRET_ENV = "OVERTURE_TEST_WORKERAPP_PUSH_SECRET"
os.environ.setdefault(PUSH_SECRET_ENV, "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
app.task("t.push", url="http://127.0.0.1:9/never", secret_env=PUSH_SECRET_ENV)


@app.task("t.async_counted")
async def async_counted(seconds: float) -> str:
    """``t.counted`` on the loop."""
    RUNNING["now"] += 1
    RUNNING["most"] = max(RUNNING["most"], RUNNING["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNNING["now"] -= 1
    return "slept"


STARTS: list[Any] = []


@app.task("t.blocking")
async def blocking(value: Any) -> str:
    """Blocks its loop past a short lease (no heartbeat can run), then waits politely."""
    STARTS.append(value)
    time.sleep(0.5)  # noqa: ASYNC251 (blocking the loop is the point)
    await asyncio.sleep(0.3)
    return "done"
