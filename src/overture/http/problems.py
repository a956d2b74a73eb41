"""Every error the API answers, as JSON ``{"error": "...", ...}`` with its status.

Handlers raise :class:`ApiError` (or let an :class:`~overture.OvertureError` through);
:func:`install` maps both, FastAPI's own validation errors and Starlette's HTTP errors
(an unknown path, a wrong method) to the same shape, so a client reads one key whatever
went wrong. Every 4xx is answered before anything is written.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..errors import (
    ConfigError,
    EventValidationError,
    MalformedEvent,
    NotFound,
    OvertureError,
    UnknownEventType,
)


class ApiError(Exception):
    """An answer other than success: ``status`` and ``{"error": message, **extra}``.

    Args:
        status: the HTTP status (4xx for the caller's mistakes).
        message: one sentence saying what is wrong and, where it helps, what to do.
        **extra: more JSON members (``field``, ``ids``, ...).
    """

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, **self.extra}, status_code=self.status)


def from_overture(error: OvertureError) -> ApiError:
    """The answer to an error the client or codec raised (nothing was written)."""
    if isinstance(error, EventValidationError | UnknownEventType):
        return ApiError(422, str(error), **_fields(error))
    if isinstance(error, MalformedEvent):
        return ApiError(400, str(error))
    if isinstance(error, NotFound):
        return ApiError(404, str(error))
    if isinstance(error, ConfigError):
        return ApiError(409, str(error))
    # storage and broker failures: the request may be retried, nothing of it was written
    return ApiError(503, f"{type(error).__name__}: {error}")


def _fields(error: Exception) -> dict[str, Any]:
    """The data fields a contract violation names (``fields``: dotted paths), when the
    codec's error carries pydantic's."""
    cause = error.__cause__
    if not isinstance(cause, ValidationError):
        return {}
    return {"fields": [".".join(str(p) for p in e["loc"]) for e in cause.errors()]}


async def _api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error.response()


async def _overture_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OvertureError)
    return from_overture(error).response()


async def _request_invalid(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    fields = []
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p not in ("query", "path", "body")]
        field = ".".join(loc)
        fields.append(field)
        problems.append(f"{field or 'request'}: {item.get('msg')}")
    return ApiError(400, "; ".join(problems), fields=fields).response()


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse(
        {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
    )


def install(api: FastAPI) -> None:
    """Answer every error of ``api`` as JSON ``{"error": ...}``."""
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(OvertureError, _overture_error)
    api.add_exception_handler(RequestValidationError, _request_invalid)
    api.add_exception_handler(HTTPException, _http_error)
