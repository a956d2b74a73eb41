"""``/healthz`` (the process answers) and ``/readyz`` (it should get traffic)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..async_client import AsyncClient
from .models import Health, Problem
from .state import ApiState, Readiness

BACKEND_TIMEOUT = 2.0
"""Seconds the backend gets to answer a readiness check."""


def router(state: ApiState) -> APIRouter:
    """The health routes of an API."""
    routes = APIRouter(tags=["health"])

    @routes.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> JSONResponse:
        """200 while the process serves requests."""
        return JSONResponse({"status": "ok"})

    @routes.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Problem, "description": "not ready, and why"}},
        summary="Readiness",
    )
    async def readyz() -> JSONResponse:
        """200 when ready for traffic: in ``overture run --http``, once the engine owns
        its partitions and consumes them; in ``overture serve``, while the backend
        answers. Else 503 with the reason."""
        reason = await state.ready()
        if reason is not None:
            return JSONResponse({"error": f"not ready: {reason}", "status": "not ready"}, 503)
        return JSONResponse({"status": "ready"})

    return routes


def backend_answers(client: AsyncClient) -> Readiness:
    """Ready while a read of the backend (the log's end) answers within
    :data:`BACKEND_TIMEOUT` seconds."""

    async def check() -> str | None:
        log = client.backend.log
        try:
            await asyncio.wait_for(asyncio.to_thread(log.end_offset, 0), BACKEND_TIMEOUT)
        except TimeoutError:
            return f"the backend did not answer within {BACKEND_TIMEOUT:g}s"
        except Exception as error:  # any failure of the backend is the reason
            return f"the backend failed: {type(error).__name__}: {error}"
        return None

    return check
