"""The HTTP API (FastAPI on uvicorn): ``create_api(app, backend)`` and the server that
``overture serve`` and ``overture run --http`` run. See ``docs/http.md``."""

from __future__ import annotations

from .api import DEFAULT_MAX_BODY, create_api
from .server import ApiServer, bind
from .state import Readiness

__all__ = ["DEFAULT_MAX_BODY", "ApiServer", "Readiness", "bind", "create_api"]
