"""The dead-letter routes: list, show (the original bytes, lossless), replay one or many,
delete one or many (all or none)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..cli.render import dead_letter_dict
from ..client import DeadLettersDeleted, all_text
from ..errors import NotFound
from . import binding
from .models import (
    DeadLetterOut,
    DeadLetters,
    Deleted,
    DeleteRequest,
    Problem,
    Replayed,
    ReplayRequest,
)
from .problems import ApiError
from .state import ApiState, read

_404: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "no such dead letter"}
}


def router(state: ApiState) -> APIRouter:
    """The dead-letter routes of an API."""
    routes = APIRouter(tags=["dead letters"])
    client = state.client

    @routes.get("/dead-letters", response_model=DeadLetters, summary="List dead letters")
    async def list_dead_letters() -> JSONResponse:
        """Every dead letter: reason, source, attempts and the original bytes (text when
        UTF-8, else base64, as ``value_encoding`` says; the same form as ``overture dlq
        list --json``)."""
        letters = await client.dead_letters()
        return JSONResponse({"dead_letters": [dead_letter_dict(letter) for letter in letters]})

    @routes.get(
        "/dead-letters/{letter_id}",
        response_model=DeadLetterOut,
        responses=_404,
        summary="One dead letter",
    )
    async def show_dead_letter(letter_id: str) -> JSONResponse:
        """One dead letter, its original bytes included."""
        letter = await read(client, client.backend.store.dead_letter, letter_id)
        if letter is None:
            raise ApiError(404, f"no dead letter {letter_id!r}")
        return JSONResponse(dead_letter_dict(letter))

    @routes.post(
        "/dead-letters/{letter_id}/replay",
        status_code=202,
        response_model=Replayed,
        responses=_404,
        summary="Replay one dead letter",
    )
    async def replay_dead_letter(letter_id: str) -> JSONResponse:
        """Ask the engine to retry the dead letter (a handler runs again; an event that
        could not be routed is routed again); 202 once the request is committed."""
        request = await client.replay_dead_letter(letter_id)
        return JSONResponse({"requested": [{"id": letter_id, "request": request}]}, status_code=202)

    @routes.post(
        "/dead-letters/replay",
        status_code=202,
        response_model=Replayed,
        responses={
            400: {"model": Problem, "description": "neither or both of ids and all"},
            **_404,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ReplayRequest.model_json_schema()}},
            }
        },
        summary="Replay several dead letters",
    )
    async def replay_dead_letters(request: Request) -> JSONResponse:
        """Replay the letters ``ids`` names (404 naming any that do not exist, and then
        none is replayed), or every letter with ``{"all": true}``."""
        wanted = await _body(request, ReplayRequest, "a replay request")
        letters = {letter.id for letter in await client.dead_letters()}
        if wanted.ids is not None:
            missing = [i for i in wanted.ids if i not in letters]
            if missing:
                raise ApiError(
                    404,
                    f"no dead letter(s) {', '.join(map(repr, missing))}; nothing was replayed",
                    ids=missing,
                )
            ids = list(dict.fromkeys(wanted.ids))
        else:
            ids = sorted(letters)
        requested = []
        for letter_id in ids:
            try:
                requested.append(
                    {"id": letter_id, "request": await client.replay_dead_letter(letter_id)}
                )
            except NotFound:
                continue  # replayed (and removed) by the engine meanwhile
        return JSONResponse({"requested": requested}, status_code=202)

    @routes.delete(
        "/dead-letters/{letter_id}",
        response_model=Deleted,
        responses={202: {"model": Deleted, "description": "requested (Kafka)"}, **_404},
        summary="Delete one dead letter",
    )
    async def delete_dead_letter(letter_id: str, reason: str | None = None) -> JSONResponse:
        """Delete the dead letter for good (200); on Kafka its engine is asked to
        (202, ``requests`` names the request event). ``reason`` is logged."""
        return _deleted(await client.delete_dead_letters([letter_id], reason=reason))

    @routes.post(
        "/dead-letters/delete",
        response_model=Deleted,
        responses={
            202: {"model": Deleted, "description": "requested (Kafka)"},
            400: {"model": Problem, "description": "neither or both of ids and all"},
            **_404,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": DeleteRequest.model_json_schema()}},
            }
        },
        summary="Delete several dead letters",
    )
    async def delete_dead_letters(request: Request) -> JSONResponse:
        """Delete the letters ``ids`` names (404 naming any that do not exist, and then
        none is deleted), or every letter with ``{"all": true}``; ``reason`` is logged."""
        wanted = await _body(request, DeleteRequest, "a delete request")
        return _deleted(
            await client.delete_dead_letters(
                wanted.ids, all=wanted.ids is None, reason=wanted.reason
            )
        )

    async def _body(request: Request, model: type[Chosen], what: str) -> Chosen:
        """The body as ``model`` (``ids`` or ``all``), or a 400 saying what is wrong."""
        body = await binding.read_body(request, state.max_body)
        value = binding.parse_json(body, "the body")
        try:
            wanted = model.model_validate(value)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()
            )
            raise ApiError(400, f"the body is not {what}: {problems}") from None
        if (wanted.ids is None) == (not wanted.all):
            raise ApiError(400, 'give either "ids": [...] or "all": true')
        if wanted.ids is not None and not all_text(wanted.ids):
            raise ApiError(400, '"ids" must be non-empty strings, at least one')
        return wanted

    return routes


Chosen = TypeVar("Chosen", ReplayRequest, DeleteRequest)


def _deleted(outcome: DeadLettersDeleted) -> JSONResponse:
    return JSONResponse(
        {"deleted": outcome.ids, "requests": outcome.requests},
        status_code=200 if outcome.done else 202,
    )
