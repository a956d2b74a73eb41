"""JSON values in journals, with type fidelity taken from annotations.

Everything a process sees from the outside (step results, event payloads) is round-tripped
through JSON *also on the live path*, so a live run and a replay hand the code identical
values. Where the producing function is annotated, the value is validated back into that
type (a pydantic model stays a model), as Temporal's data converter does with type hints.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python


def to_json(value: Any) -> Any:
    """A JSON-compatible form of ``value`` (models, dataclasses, datetimes, …)."""
    return to_jsonable_python(value)


_PLAIN = frozenset({str, int, float, bool})


@lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _unannotated(annotation: Any) -> bool:
    return annotation is None or annotation is Any or annotation is inspect.Parameter.empty


def from_json(value: Any, annotation: Any) -> Any:
    """Validate a JSON value back into ``annotation`` (no-op when unannotated)."""
    if _unannotated(annotation):
        return value
    if annotation in _PLAIN and type(value) is annotation:
        return value  # already exactly that type: skip the validator (the common case)
    return _adapter(annotation).validate_python(value)


@lru_cache(maxsize=4096)
def return_annotation(fn: Callable[..., Any]) -> Any:
    """The resolved return annotation of ``fn`` (``None`` when absent or unresolvable).

    A coroutine function's annotation is its awaited result type, which is what we want.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw JSON
        return None
    hint = hints.get("return")
    return None if hint is type(None) else hint


@lru_cache(maxsize=4096)
def result_decoder(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """``from_json(value, return_annotation(fn))`` as one function, made once per step
    function (it is needed for every step)."""
    annotation = return_annotation(fn)
    if _unannotated(annotation):
        return identity
    return functools.partial(from_json, annotation=annotation)


def identity(value: Any) -> Any:
    """A value decoded as itself (operations whose results need no conversion)."""
    return value


def snapshot(value: Any) -> Any:
    """A deep copy of a JSON container (scalars are immutable and returned as they are).

    Process code gets private copies, so that mutating what it received can change
    neither a journal entry nor what another instance sees.
    """
    if isinstance(value, dict | list):
        return orjson.loads(orjson.dumps(value))
    return value


def describe_error(error: BaseException) -> dict[str, str]:
    """The journaled form of an exception."""
    return {"type": type(error).__name__, "message": str(error)}
