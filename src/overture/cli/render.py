"""Rich rendering of instances, journals, events and dead letters, plus their JSON forms.

Only presentation lives here: the commands fetch, these functions draw. The JSON forms are
what ``--json`` prints, one object per line, so scripts can use ``jq`` on them.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..client import Instance, LoggedEvent
from ..core import journal as jr
from ..ports import DeadLetter
from ..protocol import PARTITIONKEY, Status

STATUS_STYLES: dict[str, str] = {
    Status.RUNNING: "cyan",
    Status.WAITING: "yellow",
    Status.COMPLETED: "green",
    Status.FAILED: "bold red",
    Status.CANCELLED: "magenta",
    Status.STUCK: "bold red reverse",
}

_PIPE_WIDTH = 200
"""Console width when stdout is not a terminal: wide enough that piped tables keep ids
whole (rich would otherwise assume 80 columns and cut them)."""


def make_console(*, stderr: bool = False, pipe_width: int = _PIPE_WIDTH) -> Console:
    """A console on stdout (or stderr); created per command so that test runners that swap
    ``sys.stdout`` see the output. ``pipe_width`` applies when it is not a terminal."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = pipe_width
    return console


# -- small formatting helpers --------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON text (non-JSON values fall back to ``str``)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def short(value: Any, width: int = 48) -> str:
    """A one-line preview of a JSON value, cut to ``width`` characters."""
    text = value if isinstance(value, str) else dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt_time(value: datetime | float | None, *, precise: bool = False) -> str:
    """Local wall-clock time; ``precise`` adds milliseconds and drops the date."""
    if value is None:
        return ""
    dt = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    local = dt.astimezone()
    if precise:
        return local.strftime("%H:%M:%S.%f")[:-3]
    return local.strftime("%Y-%m-%d %H:%M:%S")


def cells(*values: str | Text) -> list[Text]:
    """Table cells as :class:`Text`: a plain ``str`` cell would be parsed as rich markup, and
    user data such as a key ``"[/x]"`` would then be mangled or even raise."""
    return [v if isinstance(v, Text) else Text(v) for v in values]


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def outcome(instance: Instance) -> str:
    """The result, or the error, of an instance in a few words."""
    if instance.error:
        error = instance.error
        if isinstance(error, dict):
            return short(f"{error.get('type', 'Error')}: {error.get('message', '')}")
        return short(error)
    if instance.result is None:
        return ""
    return short(instance.result)


# -- instances -----------------------------------------------------------------------------


def instance_dict(instance: Instance) -> dict[str, Any]:
    """The ``--json`` form of an instance."""
    return {
        "id": instance.id,
        "process": instance.process,
        "version": instance.version,
        "key": instance.key,
        "status": instance.status,
        "created": instance.created.isoformat(),
        "updated": instance.updated.isoformat(),
        "trigger_id": instance.trigger_id,
        "result": instance.result,
        "error": instance.error,
    }


def instances_table(instances: Iterable[Instance]) -> Table:
    table = Table(title="instances", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=32)
    table.add_column("process")
    table.add_column("version", justify="right")
    table.add_column("key")
    table.add_column("status")
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("result / error", overflow="ellipsis")
    for i in instances:
        table.add_row(
            *cells(
                i.id,
                i.process,
                str(i.version),
                i.key or "",
                status_text(i.status),
                fmt_time(i.created),
                fmt_time(i.updated),
                outcome(i),
            )
        )
    return table


def counts_table(counts: dict[tuple[str, str], int], statuses: Iterable[str]) -> Table:
    """Instances per process (rows) and status (columns), with totals."""
    order = list(statuses)
    table = Table(title="instances by status", title_justify="left")
    table.add_column("process")
    for status in order:
        table.add_column(status, justify="right")
    table.add_column("total", justify="right", style="bold")
    processes = sorted({name for name, _ in counts})
    for name in processes:
        row = [counts.get((name, status), 0) for status in order]
        table.add_row(*cells(name, *(f"{n:,}" if n else "-" for n in row), f"{sum(row):,}"))
    if len(processes) > 1:
        totals = [sum(counts.get((p, status), 0) for p in processes) for status in order]
        table.add_row(*cells("total", *(f"{n:,}" for n in totals), f"{sum(totals):,}"))
    return table


def instance_header(instance: Instance) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("instance", instance.id),
        ("process", f"{instance.process} v{instance.version}"),
        ("key", instance.key or "-"),
        ("status", status_text(instance.status)),
        ("created", fmt_time(instance.created)),
        ("updated", fmt_time(instance.updated)),
        ("trigger", instance.trigger_id),
    ]
    if instance.error:
        rows.append(("error", Text(dumps(instance.error), style="red")))
    elif instance.status == Status.COMPLETED:
        rows.append(("result", dumps(instance.result)))
    for name, value in rows:
        grid.add_row(*cells(name, value))
    return grid


# -- journals ------------------------------------------------------------------------------


def describe_journal(entries: list[jr.Entry]) -> list[tuple[float | None, str]]:
    """The journal as (time, line) pairs, naming the operation each result belongs to.

    ``overture.core.journal.describe`` renders an entry on its own (``#3 -> True``); here the
    whole journal is at hand, so a result line can say which step or wait it resolves.
    Command entries carry no time of their own: they happened when the previous input was
    processed, so they inherit its time.
    """
    ops: dict[int, tuple[str, str]] = {}
    lines: list[tuple[float | None, str]] = []
    now: float | None = None
    for entry in entries:
        now = entry.get("t", now)
        try:
            text = _describe(entry, ops)
        except (KeyError, TypeError):  # an entry of a newer journal format: show it raw
            text = jr.describe(entry) if entry.get("k") else repr(entry)
        lines.append((now, text))
    return lines


def keyed(key: str | None) -> str:
    """``key K``, or ``keyless`` for an event or instance without a key (not ``key None``)."""
    return "keyless" if key is None else f"key {key}"


def _describe(entry: jr.Entry, ops: dict[int, tuple[str, str]]) -> str:
    kind = entry["k"]
    if kind == "start":
        ev = entry["ev"]
        by = keyed(ev.get(PARTITIONKEY))
        return f"started by {ev['type']} {short(ev.get('data'), 60)} (event {ev['id']}, {by})"
    if kind == "cmd":
        seq, op, name = entry["s"], entry["op"], entry["n"]
        ops[seq] = (op, name)
        if op == "step":
            return f"#{seq} step {name} scheduled"
        if op == "wait":
            until = f" until {fmt_time(entry['due'], precise=True)}" if entry.get("due") else ""
            wait_key = entry.get("key")
            what = "keyless" if wait_key is None else f"with key {wait_key!r}"
            return f"#{seq} waiting for {name} {what}{until}"
        if op == "sleep":
            return f"#{seq} sleeping until {fmt_time(entry.get('due'), precise=True)}"
        if op == "emit":
            return f"#{seq} emitted {name} (event {entry.get('ev')})"
        return jr.describe(entry)
    if kind == "res":
        seq = entry["s"]
        op, name = ops.get(seq, ("operation", "?"))
        if "err" in entry:
            err = entry["err"]
            if op == "wait" and err.get("type") == "WaitTimeout":
                return f"#{seq} timed out waiting for {name}"
            return f"#{seq} {op} {name} failed: {err['type']}: {err['message']}"
        value = entry.get("ok")
        if op == "wait" and isinstance(value, dict):
            return (
                f"#{seq} received {value.get('type')} {short(value.get('data'), 60)} "
                f"(event {value.get('id')})"
            )
        if op == "sleep":
            return f"#{seq} timer fired"
        return f"#{seq} {op} {name} returned {short(dumps(value), 60)}"
    if kind == "retry":
        seq, err = entry["s"], entry["err"]
        name = ops.get(seq, ("step", "?"))[1]
        return (
            f"#{seq} {name} attempt {entry['a']} failed ({err['type']}: {err['message']}); "
            f"retry at {fmt_time(entry.get('due'), precise=True)}"
        )
    if kind == "end":
        status = str(entry["st"])
        if "err" in entry:
            err = entry["err"]
            return f"{status}: {err.get('type')}: {err.get('message')}"
        if status == Status.COMPLETED:
            return f"completed with result {dumps(entry.get('ok'))}"
        return status
    return jr.describe(entry)


def timeline_table(entries: list[jr.Entry]) -> Table:
    lines = describe_journal(entries)
    start = next((t for t, _ in lines if t is not None), None)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("time", no_wrap=True, style="dim")
    table.add_column("+s", justify="right", no_wrap=True, style="dim")
    table.add_column("what happened", overflow="fold")
    for t, text in lines:
        offset = "" if t is None or start is None else f"{t - start:.3f}"
        style = _line_style(text)
        table.add_row(*cells(fmt_time(t, precise=True), offset, Text(text, style=style)))
    return table


def _line_style(text: str) -> str:
    if text.startswith((Status.COMPLETED, "started")):
        return "green" if text.startswith(Status.COMPLETED) else "bold"
    if (
        text.startswith((Status.FAILED, Status.CANCELLED))
        or " failed" in text
        or "timed out" in text
    ):
        return "red"
    if "compensate:" in text:
        return "magenta"
    return ""


# -- events --------------------------------------------------------------------------------


def event_dict(event: LoggedEvent) -> dict[str, Any]:
    """The ``--json`` form: the CloudEvent structured form plus its log position (or, for
    an undecodable record, the error and the raw bytes, lossless: see :func:`lossless`)."""
    position = {"partition": event.partition, "offset": event.offset}
    if event.envelope is None:
        raw, encoding = lossless(event.raw)
        return {**position, "error": event.error, "raw": raw, "raw_encoding": encoding}
    return {**position, **event.envelope.to_dict()}


def events_table(events: Iterable[LoggedEvent]) -> Table:
    table = Table(title="events", title_justify="left")
    table.add_column("part", justify="right")
    table.add_column("offset", justify="right")
    table.add_column("time", no_wrap=True)
    table.add_column("type")
    table.add_column("key")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("data", overflow="ellipsis", max_width=60)
    for event in events:
        table.add_row(*cells(*event_cells(event)))
    return table


def event_cells(event: LoggedEvent) -> tuple[str, str, str, str | Text, str, str, str | Text]:
    env = event.envelope
    if env is None:
        preview = escaped(event.raw)
        return (
            str(event.partition),
            str(event.offset),
            "",
            Text("<undecodable>", style="bold red"),
            "",
            "",
            Text(f"{event.error}: {short(preview, 40)}", style="red"),
        )
    return (
        str(event.partition),
        str(event.offset),
        fmt_time(env.time),
        env.type,
        env.partitionkey or "",
        env.id,
        short(env.data, 60),
    )


def event_line(event: LoggedEvent) -> Text:
    """One line per event, for ``--follow`` (a table cannot grow as events arrive)."""
    part, offset, time, etype, key, eid, data = event_cells(event)
    line = Text(f"{part}:{offset} ", style="dim")
    line.append(f"{time} " if time else "")
    line.append(etype if isinstance(etype, Text) else Text(etype, style="bold"))
    line.append(f" key={key}" if key else "")
    line.append(f" id={eid}" if eid else "")
    line.append(" ")
    line.append(data)
    return line


# -- dead letters --------------------------------------------------------------------------


def dead_letter_dict(letter: DeadLetter) -> dict[str, Any]:
    """The ``--json`` form of a dead letter. Its bytes are lossless: each bytes field is
    text when it is UTF-8 and base64 otherwise, with an ``…_encoding`` (``"utf-8"`` or
    ``"base64"``) that says which. ``record_key`` and ``headers`` (a list of
    ``{"name", "value", "encoding"}``) are the Kafka record's as it arrived, ``null`` for
    the other logs (whose ``value`` is the event itself)."""
    out: dict[str, Any] = {
        "id": letter.id,
        "created": datetime.fromtimestamp(letter.created, UTC).isoformat(),
        "source": letter.source,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "event_type": letter.event_type,
        "key": letter.key,
        "partition": letter.partition,
        "offset": letter.offset,
    }
    out["value"], out["value_encoding"] = lossless(letter.value)
    out["record_key"], out["record_key_encoding"] = lossless(letter.raw_key)
    out["headers"] = None
    if letter.headers is not None:
        out["headers"] = [
            dict(zip(("name", "value", "encoding"), (name, *lossless(value)), strict=True))
            for name, value in letter.headers
        ]
    return out


def lossless(raw: bytes | None) -> tuple[str | None, str | None]:
    """(text, encoding) of bytes for JSON: UTF-8 text as it is, anything else base64."""
    if raw is None:
        return None, None
    try:
        return raw.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escaped(raw: bytes) -> str:
    """Bytes for a human: UTF-8 text as it is, other bytes and control characters
    (which a terminal would not show, or would obey) as ``\\xNN`` escapes."""
    text = raw.decode("utf-8", errors="backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _original(letter: DeadLetter) -> str:
    """What arrived: the value, and for a Kafka record also its key and headers."""
    if letter.headers is None:
        return escaped(letter.value)
    key = "(none)" if letter.raw_key is None else escaped(letter.raw_key)
    headers = ", ".join(
        f"{name}={'(null)' if value is None else escaped(value)}" for name, value in letter.headers
    )
    return f"record key: {key}\nheaders: {headers or '(none)'}\nvalue: {escaped(letter.value)}"


def dead_letters_table(letters: Iterable[DeadLetter]) -> Table:
    table = Table(title="dead letters", title_justify="left", show_lines=True)
    table.add_column("id", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("source")
    table.add_column("reason", overflow="fold")
    table.add_column("attempts", justify="right")
    table.add_column("event type")
    table.add_column("key")
    table.add_column("original event", overflow="fold")
    for letter in letters:
        table.add_row(
            *cells(
                letter.id,
                fmt_time(letter.created),
                letter.source,
                Text(letter.reason, style="red"),
                str(letter.attempts),
                letter.event_type or "",
                letter.key or "",
                _original(letter),
            )
        )
    return table
