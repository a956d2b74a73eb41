"""Reading a stream operator's live state from a store: ``Client.window`` and
``overture windows`` (what is open now, and how many events came late)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ..errors import ConfigError, NotFound
from ..ports import StateView
from .operator import StreamDef
from .runtime import namespace
from .windows import WindowResult


@dataclass(frozen=True, slots=True)
class StreamView:
    """An operator's live state: its open windows (or partial matches) and late count."""

    open: list[Any]
    late: int


def _definition(streams: list[StreamDef], name: str) -> StreamDef:
    for definition in streams:
        if definition.name == name:
            return definition
    known = ", ".join(sorted(d.name for d in streams)) or "none"
    raise NotFound(f"no stream operator {name!r} in this app (known: {known})")


def view(
    streams: list[StreamDef] | None, store: StateView, name: str, key: str | None
) -> StreamView:
    """What operator ``name`` holds open (for ``key``, or every key), from the store.

    Raises:
        ConfigError: no app given (the operator reads its own state format).
        NotFound: the app has no operator of that name.
    """
    if streams is None:
        raise ConfigError("reading a window needs the app: Client(..., app=app)")
    definition = _definition(streams, name)
    operator, ns = definition.operator, namespace(name)
    found: list[Any] = []
    late = 0
    for entry, value in store.scan(ns, b""):
        if entry.startswith(b"l:"):
            late += int(orjson.loads(value))
        elif entry.startswith(b"k:"):
            k = entry[len(b"k:00000:") :].decode()
            if key is None or k == key:
                found.extend(operator.describe(k, operator.load(value)))
    return StreamView([_typed(item) for item in found], late)


def _typed(item: Any) -> Any:
    if isinstance(item, dict) and {"key", "start", "end", "values"} <= item.keys():
        return WindowResult(
            item["key"],
            datetime.fromisoformat(item["start"]),
            datetime.fromisoformat(item["end"]),
            item["values"],
        )
    return item
