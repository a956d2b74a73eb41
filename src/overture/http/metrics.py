"""``GET /metrics``: Prometheus metrics in the text exposition format.

Always the store's gauges (``observe.metrics.StoreCollector``: instances by status per
process, dead letters by source), read at each scrape; with the engine's counters and
histograms too when the API is given the engine's ``MetricsObserver`` (an API beside
an engine in the same process).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry

from ..observe.metrics import CONTENT_TYPE, exposition, store_registry
from .state import ApiState


def router(state: ApiState, engine: CollectorRegistry | None = None) -> APIRouter:
    """The metrics route of an API (``engine``: the engine's registry, if any)."""
    routes = APIRouter(tags=["metrics"])
    registries = [store_registry(state.client.sync)]
    if engine is not None:
        registries.append(engine)

    @routes.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        """The metrics in Prometheus' text exposition format (docs/observability.md)."""
        # the store's gauges read the store: off the event loop
        body = await asyncio.to_thread(exposition, *registries)
        return Response(body, media_type=CONTENT_TYPE)

    return routes
