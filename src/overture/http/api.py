"""The API's app factory: one FastAPI app over an :class:`~overture.AsyncClient`.

Each group of routes is a module with a ``router(state)`` factory (events, instances,
dead letters, health; the task endpoints for HTTP workers, ``tasks.TaskDesk``, also
own the queue's long-poll subscription and the threads of their port calls). Every
route reads and writes through the client, so the API is a front door like the CLI:
no engine change, any number of API processes next to the engines, and concurrent
``POST /events`` requests share the client's group commit (each answered once its
events are durable).

Interactive docs (``/docs``) are FastAPI's Swagger UI, whose script and style sheets
its page loads from a CDN (jsdelivr): the page needs a browser with internet access.
No well-kept pip package ships the assets for FastAPI to serve, so Overture does not
bundle a copy; ``/openapi.json`` is complete and served locally, for any OpenAPI tool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from .. import __version__, dashboard
from ..app import App
from ..async_client import AsyncClient
from ..errors import ConfigError
from ..ports import Backend
from . import deadletters, events, health, instances, metrics, problems, tasks
from .state import ApiState, Readiness

DEFAULT_MAX_BODY = 1 << 20
"""The default limit of a request body: 1 MiB."""


def create_api(
    app: App,
    backend: str | Backend | AsyncClient,
    *,
    ready: Readiness | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The HTTP API of ``app`` on ``backend``.

    Args:
        app: its contracts validate the events posted; its processes say which
            instances an event starts.
        backend: a backend URL, an open backend (left open), or a client of the app to
            use (left open).
        ready: the readiness check of ``/readyz`` (default: the backend answers a read).
        max_body: the largest request body accepted, in bytes (413 beyond).
        metrics_registry: also served on ``/metrics``: the registry of the engine's
            ``MetricsObserver`` when the API runs beside it (the store's gauges always).

    Raises:
        ConfigError: ``max_body`` is not a positive integer, or the client is of another
            app.
    """
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ConfigError(f"max_body must be a positive number of bytes, not {max_body!r}")
    if isinstance(backend, AsyncClient):
        if backend.app is not app:
            raise ConfigError("the client given to create_api must be of the same app")
        client, owned = backend, False
    else:
        client, owned = AsyncClient(backend, app=app), True
    state = ApiState(
        app=app,
        client=client,
        max_body=max_body,
        ready=ready or health.backend_answers(client),
    )

    desk = tasks.TaskDesk(state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            desk.close()
            if owned:
                await client.close()

    # FastAPIOffline: /docs (Swagger UI) and /redoc with their assets served from the
    # package, not a CDN (the machines that run Overture often reach no internet)
    api = FastAPIOffline(
        title=f"Overture API: {app.name}",
        version=__version__,
        description="Send events, inspect and operate instances and dead letters, work "
        "task attempts as an HTTP worker. "
        'Every error is JSON {"error": "..."}. See docs/http.md.',
        lifespan=lifespan,
    )
    problems.install(api)
    for module in (events, instances, deadletters, health):
        api.include_router(module.router(state))
    api.include_router(desk.router())
    api.include_router(dashboard.router(state))  # the web UI at /ui/
    api.include_router(metrics.router(state, metrics_registry))
    api.state.overture = state
    api.state.tasks = desk  # ApiServer.stop ends its long polls
    return api
