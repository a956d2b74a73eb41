"""What every router of the API shares: the app, its client, the limits, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..app import App
from ..async_client import AsyncClient
from ..client import Instance

T = TypeVar("T")

Readiness = Callable[[], Awaitable[str | None]]
"""Says whether the API should get traffic: ``None`` when ready, else the reason not."""


@dataclass(frozen=True, slots=True)
class ApiState:
    """Handed to each router factory (``router(state)``), so routes need no globals.

    Attributes:
        app: the app whose contracts events are validated against.
        client: every read and write goes through it (sends group-committed).
        max_body: the largest request body accepted, in bytes.
        ready: the readiness check of ``/readyz``.
    """

    app: App
    client: AsyncClient
    max_body: int
    ready: Readiness


def iso(moment: datetime | float | None) -> str | None:
    """RFC 3339 (UTC) of a datetime or Unix time."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.isoformat()


def instance_json(instance: Instance) -> dict[str, Any]:
    """The JSON form of an instance (``models.InstanceOut``)."""
    return {
        "id": instance.id,
        "process": instance.process,
        "version": instance.version,
        "key": instance.key,
        "status": str(instance.status),
        "created": iso(instance.created),
        "updated": iso(instance.updated),
        "trigger_id": instance.trigger_id,
        "result": instance.result,
        "error": instance.error,
    }


async def read(client: AsyncClient, fn: Callable[..., T], *args: Any) -> T:
    """A read the client has no method for: inline on a local backend (memory, SQLite),
    in a worker thread on a remote one (the loop must not wait for the network)."""
    if client.backend.capabilities.remote:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
