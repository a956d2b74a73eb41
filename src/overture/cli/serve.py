"""``overture run``: one engine process, until SIGINT or SIGTERM, then a drained stop.

On Kafka the process joins the app's engine group and runs an engine per partition it is
assigned; several ``overture run`` processes share the partitions. Unless told not to,
the process also runs a worker for the app's tasks (``overture.worker``), so an app with
tasks needs no second command on the embedded backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from ..app import App
from ..backends import open_backend
from ..client import Client
from ..errors import BrokerUnavailable, OvertureError
from ..observe.metrics import MetricsObserver, MetricsServer, joined, store_registry
from ..ports import Backend
from ..retention import DEFAULT_RETENTION
from ..runtime.host import Host
from ..runtime.observer import combine
from ..runtime.options import EngineOptions
from ..worker import Worker, queues_of
from .api import engine_api
from .common import CliError, stderr_line

log = logging.getLogger("overture.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (stdout is left to command output), as text lines or,
    with ``log_format="json"``, one JSON object per line (:mod:`overture.observe.logs`)."""
    # force=True: a user's module may have called basicConfig at import time; the command
    # line wins.
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    if log_format == "json":
        from ..observe.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


async def serve(
    app: App,
    url: str,
    *,
    options: EngineOptions,
    partitions: int | None,
    grace: float = 5.0,
    tasks: bool = True,
    task_concurrency: int = 8,
    http: socket.socket | None = None,
    max_body: int | None = None,
    metrics: tuple[str, int] | None = None,
    trace: bool = False,
) -> None:
    """Run an engine for ``app`` on ``url`` until SIGINT/SIGTERM, then drain and return.

    Beside the engine run its *companions*: a worker for the app's tasks (unless
    ``tasks`` is false) and the HTTP API (``http``). One rule covers them all: if the
    engine or a companion ends on its own (only a crash or a failure to start does), the
    others are stopped and drained and the command fails with one line.

    Args:
        options: how the engines run.
        partitions: partitions of a new log (an existing log keeps its count).
        grace: seconds running steps (and task attempts) get to finish once a stop is
            requested; steps still running then are abandoned and run again after the
            next start, attempts are left to their leases.
        tasks: also run a worker for the app's tasks that have a function (if any).
        task_concurrency: attempts that worker runs at once (``Worker.concurrency``).
        http: serve the HTTP API on this bound socket, on this loop (``--http``).
        max_body: the API's request body limit in bytes (default 1 MiB).
        metrics: also serve Prometheus metrics at ``http://HOST:PORT/metrics`` from a
            thread of its own (``--metrics``); with ``http`` or ``metrics`` the engine
            keeps them (``observe.metrics``), and the API's ``/metrics`` has them too.
        trace: the engine traces (``observe.tracing.TracingObserver`` on the global
            tracer provider, which the command set from the ``OTEL_*`` variables).

    Raises:
        EngineBusy: another engine already owns the embedded database.
        ConfigError: the backend URL is bad.
        CliError: the engine, the worker or the API stopped on its own (the traceback is
            logged).
    """
    backend = await open_until_signal(url, partitions, options.retention)
    if backend is None:
        log.info("stopped before the broker answered")
        return
    exporter: MetricsServer | None = None
    try:
        # before the engine starts: a backend without a task queue is refused at once
        worker = (
            Worker(app, backend, grace=grace, concurrency=task_concurrency)
            if tasks and queues_of(app)
            else None
        )
        observer = None if http is None and metrics is None else MetricsObserver()
        if observer is not None:
            options = replace(options, observer=combine(options.observer, observer))
        registry = None if observer is None else observer.registry
        if trace:
            from ..observe.tracing import TracingObserver

            system = "kafka" if url.startswith("kafka://") else "overture"
            group = options.group or f"engine:{app.name}"  # (the engine's default)
            tracer = TracingObserver(messaging_system=system, consumer_group=group)
            options = replace(options, observer=combine(options.observer, tracer))
        host = Host(app, backend, options=options)
        api = (
            None
            if http is None
            else engine_api(app, backend, host, http, max_body=max_body, metrics=registry)
        )
        if metrics is not None and registry is not None:
            store = store_registry(Client(backend, app=app))
            try:
                exporter = MetricsServer(metrics, joined(registry, store))
            except OSError as e:
                raise CliError(f"--metrics {metrics[0]}:{metrics[1]}: cannot listen: {e}") from e
            stderr_line(f"overture: metrics at http://{exporter.address}/metrics")
        await host.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        count = backend.log.partitions
        shared = " shared by the engine group" if host.partitioned else ""
        stderr_line(
            f"overture: engine for app {app.name!r} on {url} "
            f"({count} partition{'s' if count != 1 else ''}{shared}) running; Ctrl-C to stop"
        )
        runner = asyncio.create_task(host.run(), name="overture-engine")
        stopper = asyncio.create_task(stop.wait(), name="overture-signal")
        companions: dict[asyncio.Task[None], tuple[str, Callable[[], None]]] = {}
        if api is not None:
            companions[asyncio.create_task(api.serve(), name="overture-http")] = (
                "HTTP API",
                api.stop,
            )
            stderr_line(f"overture: HTTP API at http://{api.address}")
        if worker is not None:
            companions[asyncio.create_task(worker.run(), name="overture-worker")] = (
                "worker",
                worker.stop,
            )
            stderr_line(
                f"overture: worker {worker.worker_id} serving {', '.join(worker.queues)} "
                "in this process (--no-tasks: none)"
            )
        try:
            await asyncio.wait({runner, stopper, *companions}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
            for sig in signals:
                loop.remove_signal_handler(sig)
        ended = runner if runner.done() else next((t for t in companions if t.done()), None)
        if ended is None:
            log.info("stopping: draining the engine (running steps get %gs)", grace)
        else:
            part = "engine" if ended is runner else companions[ended][0]
            log.info("stopping: the %s stopped", part)
        # The API stops first (no new input while draining), then the worker and the
        # engine drain together: attempts finish, or are left to their leases.
        for _, stop_companion in companions.values():
            stop_companion()
        if not runner.done():
            await host.stop(grace=grace)
        await asyncio.gather(runner, *companions, return_exceptions=True)
        if ended is None:
            log.info("engine stopped")
            return
        error = ended.exception()
        if ended is runner:
            # The engine loop ended on its own: only a crash does that. The traceback
            # goes to the log; the command ends with one line.
            if error is None:
                return
            if isinstance(error, OvertureError):
                raise error
            log.critical("the engine crashed", exc_info=error)
            raise CliError(f"the engine stopped on {type(error).__name__}: {error}")
        # A companion ended on its own (the API could not serve, the worker crashed):
        # the command fails instead of running on without what it was asked for.
        if error is not None:
            log.critical("the %s crashed", part, exc_info=error)
        why = "see the log" if error is None else f"{type(error).__name__}: {error}"
        raise CliError(f"the {part} stopped ({why}); the engine was drained")
    finally:
        if exporter is not None:
            exporter.close()
        backend.close()


async def open_until_signal(
    url: str, partitions: int | None, retention: timedelta | None = DEFAULT_RETENTION
) -> Backend | None:
    """:func:`_open`, given up at once on SIGINT/SIGTERM (then ``None``): waiting for a
    cluster that is down must not make Ctrl-C wait for a connection timeout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    opener = asyncio.create_task(_open(url, partitions, retention), name="overture-connect")
    stopper = asyncio.create_task(stop.wait(), name="overture-signal")
    try:
        await asyncio.wait({opener, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        stopper.cancel()
    if opener.done():
        backend = opener.result()
        if not stop.is_set():
            return backend
        backend.close()  # the signal came with the connection: honour the signal
        return None
    opener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await opener
    return None


async def _open(url: str, partitions: int | None, retention: timedelta | None) -> Backend:
    """Open the backend; a Kafka cluster that does not answer is retried (with the reason
    logged) until it does, so engines can be started before the cluster is up."""
    if url.startswith("kafka:"):
        log.info("connecting to %s", url)
    pause = 1.0
    while True:
        try:
            return await _in_daemon_thread(
                lambda: open_backend(url, partitions=partitions, retention=retention)
            )
        except BrokerUnavailable as error:
            log.error("%s; retrying in %.0fs", error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


async def _in_daemon_thread(open_: Callable[[], Backend]) -> Backend:
    """Run a blocking ``open_`` in a daemon thread.

    Not ``asyncio.to_thread``: ``asyncio.run`` joins the default executor's threads on the
    way out, so a stop requested during a 15-second metadata request would wait for it. An
    abandoned daemon thread ends with the process; a backend it opens late is closed.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Backend] = loop.create_future()

    def settle(backend: Backend | None, error: BaseException | None) -> None:
        if future.cancelled():
            if backend is not None:
                backend.close()
        elif error is not None:
            future.set_exception(error)
        else:
            assert backend is not None
            future.set_result(backend)

    def target() -> None:
        backend: Backend | None = None
        error: BaseException | None = None
        try:
            backend = open_()
        except BaseException as exc:  # handed to the waiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
            loop.call_soon_threadsafe(settle, backend, error)

    threading.Thread(target=target, name="overture-connect", daemon=True).start()
    return await future


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("%s again: already stopping, waiting for running steps", sig.name)
        return
    log.info("%s received", sig.name)
    stop.set()
