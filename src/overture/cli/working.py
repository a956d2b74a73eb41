"""``overture worker``: one worker process running an app's task functions, until SIGINT
or SIGTERM, then a drained stop (running attempts get the grace period).

Any number of them may run, on any machine that reaches the backend: each claims
attempts of its queues with leases, so an attempt runs on one worker at a time, and the
attempts of a worker that dies are handed to another when their leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from ..app import App
from ..errors import OvertureError
from ..worker import Worker
from .common import CliError, stderr_line
from .serve import open_until_signal

log = logging.getLogger("overture.cli")


async def work(
    app: App,
    url: str,
    *,
    queues: list[str] | None,
    concurrency: int,
    lease: float,
    grace: float,
) -> None:
    """Run a :class:`~overture.worker.Worker` for ``app`` on ``url`` until SIGINT/SIGTERM.

    Raises:
        ConfigError: no queue to serve (the app has no task with a function and no
            ``queues`` were given), an option out of range, or a bad backend URL.
        CliError: the worker crashed (the traceback is logged).
    """
    backend = await open_until_signal(url, None)
    if backend is None:
        log.info("stopped before the broker answered")
        return
    try:
        worker = Worker(
            app, backend, queues=queues, concurrency=concurrency, lease=lease, grace=grace
        )
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        stopping: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if stopping:
                log.warning("%s again: already stopping, waiting for running attempts", sig.name)
                return
            stopping.append(sig)
            log.info("%s received: stopping (running attempts get %gs)", sig.name, grace)
            worker.stop()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        stderr_line(
            f"overture: worker {worker.worker_id} for app {app.name!r} on {url} serving "
            f"{', '.join(worker.queues)} running; Ctrl-C to stop"
        )
        try:
            await worker.run()
        except OvertureError:
            raise
        except Exception as error:
            log.critical("the worker crashed", exc_info=error)
            raise CliError(f"the worker stopped on {type(error).__name__}: {error}") from None
        finally:
            for sig in signals:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
    finally:
        backend.close()
