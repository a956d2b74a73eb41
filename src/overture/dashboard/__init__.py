"""The web dashboard: server-rendered pages under ``/ui/`` of the HTTP API (see
docs/dashboard.md)."""

from __future__ import annotations

from .routes import router

__all__ = ["router"]
