"""Review of round 1: a :class:`~overture.worker.Worker` whose ``run`` is cancelled (a
task group torn down, an app's own shutdown) must not leave its threads behind."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import overture as ov
from overture.backends import open_backend
from overture.worker import Worker


def _worker_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("overture-task", "overture-worker-io")) and t.is_alive()
    ]


async def test_a_cancelled_worker_ends_its_threads() -> None:
    app = ov.App("cancelled")

    @app.task("t.echo")
    def echo(value: Any) -> Any:
        return value

    backend = open_backend(f"memory://{uuid.uuid4().hex}")
    before = set(_worker_threads())
    try:
        worker = Worker(app, backend, poll=0.05)
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 5
        while not set(_worker_threads()) - before:  # its first claim started a thread
            assert time.monotonic() < deadline, "the worker never claimed"
            await asyncio.sleep(0.01)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        deadline = time.monotonic() + 5
        while left := set(_worker_threads()) - before:
            assert time.monotonic() < deadline, f"threads left running: {sorted(left)}"
            await asyncio.sleep(0.02)
    finally:
        backend.close()
