"""The instance routes: list (filters, cursor pages), one with its timeline, cancel, and
the result long poll, woken by the commit that finishes the instance."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ..client import ALL, Instance
from ..core import journal as jr
from ..errors import NotFound
from ..protocol import FINAL, Status
from .models import CancelRequested, InstanceDetail, InstancePage, Outcome, Problem
from .problems import ApiError
from .state import ApiState, instance_json, iso

MAX_WAIT = 300.0
"""The longest ``wait`` of the result long poll, in seconds."""
MAX_PAGE = 1000

_404: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such instance"}}
_400: dict[int | str, dict[str, Any]] = {400: {"model": Problem, "description": "a bad parameter"}}


def router(state: ApiState) -> APIRouter:
    """The instance routes of an API."""
    routes = APIRouter(tags=["instances"])
    client = state.client

    @routes.get("/instances", response_model=InstancePage, responses=_400, summary="List instances")
    async def list_instances(
        process: str | None = Query(None, description="Only this process's instances."),
        status: Status | None = Query(None, description="Only instances with this status."),
        key: str | None = Query(None, description="Only instances with this key."),
        created_after: datetime | None = Query(
            None, description="Only instances created at or after this time (RFC 3339)."
        ),
        created_before: datetime | None = Query(
            None, description="Only instances created before this time (RFC 3339)."
        ),
        limit: int = Query(100, ge=1, le=MAX_PAGE, description="Instances per page."),
        cursor: str | None = Query(
            None, description="The next_cursor of the previous page (opaque)."
        ),
    ) -> JSONResponse:
        """Instances, oldest first (by creation time, then id). A page's cursor names
        the last instance shown, so instances created meanwhile never shift the pages
        (they come at the end)."""
        after = None if cursor is None else _decode(cursor)
        low = None if created_after is None else _aware(created_after)
        high = None if created_before is None else _aware(created_before)
        # The store filters by process and status and orders by (created, id); the rest is
        # filtered here (the port has no key/time/keyset query yet).
        rows = await client.instances(
            process=process, status=None if status is None else str(status), limit=ALL
        )
        page: list[Instance] = []
        more = False
        for row in rows:
            if key is not None and row.key != key:
                continue
            if low is not None and row.created < low:
                continue
            if high is not None and row.created >= high:
                continue
            if after is not None and (row.created, row.id) <= after:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(row)
        next_cursor = _encode(page[-1]) if more else None
        return JSONResponse(
            {"instances": [instance_json(i) for i in page], "next_cursor": next_cursor}
        )

    @routes.get(
        "/instances/{instance_id}",
        response_model=InstanceDetail,
        responses=_404,
        summary="One instance and its timeline",
    )
    async def show_instance(instance_id: str) -> JSONResponse:
        """The instance (its full id, or a unique prefix or suffix of 6 or more
        characters) and its journal as a timeline."""
        instance = await client.instance(instance_id)
        entries = await client.journal(instance.id)
        timeline = [
            {
                "time": iso(entry.get("t")),
                "kind": entry.get("k"),
                "text": jr.describe(entry),
                "entry": entry,
            }
            for entry in entries
        ]
        return JSONResponse({"instance": instance_json(instance), "timeline": timeline})

    @routes.post(
        "/instances/{instance_id}/cancel",
        status_code=202,
        response_model=CancelRequested,
        responses={**_404, 409: {"model": Problem, "description": "it has already finished"}},
        summary="Cancel an instance",
    )
    async def cancel_instance(instance_id: str) -> JSONResponse:
        """Ask the engine to cancel the instance (its compensations run); 202 once the
        request is committed."""
        instance = await client.instance(instance_id)
        request = await client.cancel(instance.id)
        return JSONResponse({"id": instance.id, "request": request}, status_code=202)

    @routes.get(
        "/instances/{instance_id}/result",
        response_model=Outcome,
        responses={
            **_400,
            **_404,
            202: {"model": Outcome, "description": "still running when the wait ended"},
        },
        summary="Wait for an instance's result",
    )
    async def instance_result(
        instance_id: str,
        wait: float = Query(
            0.0,
            ge=0.0,
            le=MAX_WAIT,
            allow_inf_nan=False,
            description=f"Seconds to wait for the instance to finish (at most {MAX_WAIT:g}).",
        ),
    ) -> JSONResponse:
        """200 with the result (or the error) once the instance has finished, answered
        as soon as the commit that finishes it lands; 202 if it is still going when
        ``wait`` ends; 404 if no such instance exists by then (an instance an event has
        just started may take a moment to exist: waiting covers that)."""
        try:
            instance = await client.wait(instance_id, timeout=wait)
        except TimeoutError:
            try:
                instance = await client.instance(instance_id)
            except NotFound as error:
                raise ApiError(404, str(error)) from None
        finished = instance.status in FINAL
        return JSONResponse(
            {
                "id": instance.id,
                "status": str(instance.status),
                "finished": finished,
                "result": instance.result,
                "error": instance.error,
            },
            status_code=200 if finished else 202,
        )

    return routes


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _encode(instance: Instance) -> str:
    raw = orjson.dumps([instance.created.isoformat(), instance.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    """The (created, id) a cursor names.

    Raises:
        ApiError: 400, the cursor is not one this API made.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, last = orjson.loads(raw)
        if not isinstance(created, str) or not isinstance(last, str):
            raise ValueError
        moment = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError):  # JSONDecodeError is a ValueError
        raise ApiError(
            400,
            f"invalid cursor {cursor!r}: pass the next_cursor of a previous page",
            field="cursor",
        ) from None
    return _aware(moment), last
