"""``overture send``: one event from the command line, or many from a JSON-lines file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from ..client import Client
from ..errors import EventError
from ..events import Envelope, loads_exact, number_problem
from .common import CliError
from .progress import progress

CHUNK = 1000
"""Events per ``Client.send_many`` call: each chunk is one atomic append (one SQLite
transaction), large enough to amortise the commit, small enough to bound memory per write."""

_FIELDS = frozenset({"type", "data", "key", "id"})


def read_data(argument: str) -> str:
    """The text of a ``--data`` argument: itself, the contents of ``@FILE``, or stdin for
    ``-`` (curl's convention), so that an event too big for a command line can be sent.

    Raises:
        CliError: the file cannot be read or is not UTF-8.
    """
    if argument == "-":
        return sys.stdin.read()
    if not argument.startswith("@"):
        return argument
    path = argument[1:]
    if not path:
        raise CliError('--data @FILE needs a file name (or use "-" for stdin)')
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise CliError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise CliError(f"--data {argument}: {error.strerror or error}") from None


def parse_data(text: str) -> dict[str, Any]:
    """The ``--data`` argument as a JSON object, its numbers exact
    (:func:`~overture.events.number_problem`).

    Raises:
        CliError: it is not JSON, or not an object.
    """
    try:
        data = loads_exact(text)
    except ValueError as error:
        raise CliError(f"--data is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise CliError(f"--data must be a JSON object, not {_json_kind(data)}")
    problem = number_problem(data)
    if problem is not None:
        raise CliError(f"--data {problem}")
    return data


def parse_lines(lines: Iterable[str], client: Client, *, reserved: bool = False) -> list[Envelope]:
    """Validate a whole JSON-lines file into envelopes before anything is published.

    Each non-blank line is ``{"type": ..., "data": {...}, "key": ...}`` (``data`` and
    ``key`` optional; an optional ``id`` makes re-sending the file idempotent, since the log
    ignores an event id it already holds).

    Raises:
        CliError: naming the first bad line (1-based) and what is wrong with it.
    """
    envelopes: list[Envelope] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            envelopes.append(_parse_line(line, client, reserved))
        except CliError as error:
            raise CliError(f"line {number}: {error}; nothing was published") from None
    return envelopes


def _parse_line(line: str, client: Client, reserved: bool) -> Envelope:
    try:
        obj = loads_exact(line)
    except ValueError as error:
        raise CliError(f"not valid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise CliError(f"expected a JSON object, got {_json_kind(obj)}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise CliError(
            f"unknown field(s) {', '.join(map(repr, unknown))} (allowed: type, data, key, id)"
        )
    event_type = obj.get("type")
    if not isinstance(event_type, str) or not event_type:
        problem = "missing" if event_type is None else f"not a non-empty string: {event_type!r}"
        raise CliError(f"'type' is {problem}")
    data = obj.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CliError(f"'data' must be a JSON object, not {_json_kind(data)}")
    key = obj.get("key")
    if key is not None and not isinstance(key, str):
        raise CliError(f"'key' must be a string, not {_json_kind(key)}")
    attributes: dict[str, Any] = {}
    if "id" in obj:
        if not isinstance(obj["id"], str) or not obj["id"]:
            raise CliError("'id' must be a non-empty string")
        attributes["id"] = obj["id"]
    try:
        return client.envelope(event_type, data, key=key, reserved=reserved, **attributes)
    except EventError as error:
        raise CliError(str(error)) from None


def publish(client: Client, envelopes: list[Envelope], *, reserved: bool = False) -> int:
    """Publish in atomic chunks of :data:`CHUNK`; returns how many were published.

    Raises:
        CliError: a chunk failed; the message says how many earlier chunks went out.
    """
    sent = 0
    with progress(len(envelopes), "publishing") as advance:
        for start in range(0, len(envelopes), CHUNK):
            chunk = envelopes[start : start + CHUNK]
            try:
                client.send_many(chunk, reserved=reserved)
            except Exception as error:
                raise CliError(
                    f"publishing failed after {sent} of {len(envelopes)} events "
                    f"({type(error).__name__}: {error}); the first {sent} were published"
                ) from error
            sent += len(chunk)
            advance(len(chunk))
    return sent


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
