"""The dashboard's pages: server-rendered HTML under ``/ui/``, every read through the
API's :class:`~overture.AsyncClient` (so the dashboard works on any backend, next to the
engines, like the CLI).

Design: HTML rendered here with Jinja2 (autoescaped: every name, key, message and byte a
user sent is escaped), pictures drawn as inline SVG on the server, and one small script
(``static/dashboard.js``) for what HTML cannot do alone: the live event stream
(Server-Sent Events), the overview's refresh and the confirmation of destructive
actions. No CDN, no framework: every asset is package data, so the dashboard works on a
machine that reaches no internet. Bad query parameters get a 400 page that says which
and why; nothing a user types can produce a 500.

POSTs (cancel, replay) come from the dashboard's own forms only: a request a browser
marks as cross-site (``Sec-Fetch-Site``, or an ``Origin`` of another host) is refused,
so another web page cannot make a visitor's browser cancel instances.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from ..client import LoggedEvent
from ..core.identity import instance_id_for
from ..errors import ConfigError, NotFound, OvertureError
from ..http.state import ApiState, read
from ..protocol import FINAL, Status
from . import charts, timeline

PAGE_SIZES = (25, 50, 100, 250)
"""The page sizes the instance list offers (and accepts)."""
HOUR = 60
POLL = 0.2
"""How often the live event stream looks for new events when there were none, in s."""
"""Buckets of the overview's chart: one per minute of the last hour."""
_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
_NAV = (
    ("overview", "/ui/", "Overview"),
    ("instances", "/ui/instances", "Instances"),
    ("events", "/ui/events", "Live events"),
    ("dead-letters", "/ui/dead-letters", "Dead letters"),
    ("processes", "/ui/processes", "Processes"),
)


class BadRequest(Exception):
    """A query parameter or form field the page cannot use (answered with a 400 page)."""


def environment() -> Environment:
    """The dashboard's Jinja2 environment (templates from the package, autoescaped)."""
    env = Environment(
        loader=PackageLoader("overture.dashboard", "templates"),
        autoescape=select_autoescape(["html", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["nav"] = _NAV
    env.filters["when"] = _when
    env.filters["json"] = lambda value: orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    env.filters["hexdump"] = _hexdump
    return env


def router(state: ApiState) -> APIRouter:
    """The dashboard's routes (``create_api`` includes them)."""
    routes = APIRouter(include_in_schema=False)
    client = state.client
    app = state.app
    env = environment()

    def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(app_name=app.name, **context)
        return HTMLResponse(html, status_code=status_code)

    async def page(active: str, build: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await build()
        except _Forbidden as error:
            return render("error.html", 403, active=active, title="Forbidden", message=str(error))
        except BadRequest as error:
            return render("error.html", 400, active=active, title="Bad request", message=str(error))
        except NotFound as error:
            return render("error.html", 404, active=active, title="Not found", message=str(error))
        except ConfigError as error:  # what the client refuses (a bad cursor, a finished instance)
            return render("error.html", 400, active=active, title="Bad request", message=str(error))

    @routes.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @routes.get("/ui")
    async def ui_slash() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @routes.get("/ui/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            return Response("no such asset", status_code=404, media_type="text/plain")
        body = resources.files("overture.dashboard").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})

    # -- overview ----------------------------------------------------------------------

    @routes.get("/ui/")
    async def overview(request: Request) -> Response:
        async def build() -> Response:
            counts = await client.instance_counts()
            processes = sorted({p.name for p in app.processes} | {p for p, _ in counts})
            statuses = [str(s) for s in Status]
            table = {p: {s: counts.get((p, s), 0) for s in statuses} for p in processes}
            now = time.time()
            width = 60.0
            since = math.floor(now / width) * width - (HOUR - 1) * width
            rows = await client.instance_activity(
                since=datetime.fromtimestamp(since, UTC), width=timedelta(seconds=width)
            )
            chart = charts.activity_chart(rows, since, width, HOUR)
            letters = await client.dead_letters()
            reasons: dict[str, int] = {}
            for letter in letters:
                reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
            stuck = await client.find_instances(status=Status.STUCK, limit=20)
            return render(
                "overview.html",
                active="overview",
                title="Overview",
                statuses=statuses,
                table=table,
                chart=chart,
                since=since,
                letters=len(letters),
                reasons=sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])),
                stuck=stuck.instances,
            )

        return await page("overview", build)

    # -- instances -----------------------------------------------------------------------

    @routes.get("/ui/instances")
    async def instances(request: Request) -> Response:
        async def build() -> Response:
            q = request.query_params
            _only(q.keys(), {"process", "status", "key", "from", "to", "q", "cursor", "limit"})
            process = _text(q, "process")
            if process is not None and process not in {p.name for p in app.processes}:
                known = ", ".join(sorted({p.name for p in app.processes})) or "none"
                raise BadRequest(f"process: no process named {process!r} (known: {known})")
            status = _status(q)
            key = _text(q, "key")
            created_from = _moment(q, "from")
            created_to = _moment(q, "to")
            if created_from and created_to and created_from >= created_to:
                raise BadRequest("from: the time range is empty (from must be before to)")
            search = _text(q, "q")
            limit = _limit(q)
            cursor = _text(q, "cursor")
            found = await client.find_instances(
                process=process,
                status=status,
                key=key,
                created_from=created_from,
                created_to=created_to,
                search=search,
                cursor=cursor,
                limit=limit,
            )
            kept = {k: v for k, v in q.items() if k != "cursor" and v != ""}
            next_url = (
                None
                if found.cursor is None
                else "/ui/instances?" + urlencode({**kept, "cursor": found.cursor})
            )
            first_url = "/ui/instances?" + urlencode(kept) if cursor else None
            return render(
                "instances.html",
                active="instances",
                title="Instances",
                rows=found.instances,
                processes=sorted({p.name for p in app.processes}),
                statuses=[str(s) for s in Status],
                filters=q,
                limit=limit,
                page_sizes=PAGE_SIZES,
                next_url=next_url,
                first_url=first_url,
            )

        return await page("instances", build)

    @routes.get("/ui/instances/{instance_id}")
    async def instance(instance_id: str, request: Request) -> Response:
        async def build() -> Response:
            found = await client.instance(instance_id)
            entries = await client.journal(found.id)
            picture = timeline.build(entries, time.time())
            links = await _touched(
                client, app, [b.event_id for b in picture.bars if b.kind == "emit"]
            )
            trigger = entries[0].get("ev") if entries and entries[0].get("k") == "start" else None
            return render(
                "instance.html",
                active="instances",
                title=f"Instance {found.id}",
                instance=found,
                timeline=picture,
                links=links,
                entries=entries,
                trigger=trigger,
                final=found.status in FINAL,
                cancelled=request.query_params.get("cancelled"),
            )

        return await page("instances", build)

    @routes.post("/ui/instances/{instance_id}/cancel")
    async def cancel(instance_id: str, request: Request) -> Response:
        async def build() -> Response:
            _same_origin(request)
            found = await client.instance(instance_id)
            request_id = await client.cancel(found.id)
            return RedirectResponse(
                f"/ui/instances/{found.id}?" + urlencode({"cancelled": request_id}),
                status_code=303,
            )

        return await page("instances", build)

    # -- live events -----------------------------------------------------------------------

    @routes.get("/ui/events")
    async def events_page(request: Request) -> Response:
        async def build() -> Response:
            q = request.query_params
            _only(q.keys(), {"type", "key"})
            return render(
                "events.html",
                active="events",
                title="Live events",
                event_types=app.event_types,
                filters=q,
                stream="/ui/events/stream?" + urlencode({k: v for k, v in q.items() if v}),
            )

        return await page("events", build)

    @routes.get("/ui/events/stream")
    async def events_stream(request: Request) -> Response:
        q = request.query_params
        try:
            _only(q.keys(), {"type", "key"})
        except BadRequest as error:
            return Response(str(error), status_code=400, media_type="text/plain")
        wanted_type, wanted_key = _text(q, "type"), _text(q, "key")
        row = env.get_template("event_row.html")

        async def stream() -> AsyncIterator[str]:
            # client.follow(from_end=True) read from the end, but only once iterated: the
            # positions are taken here, before "ready", so that every event appended after
            # the page says it is live is shown (what the browser test relies on)
            log = client.backend.log
            positions = {p: await read(client, log.end_offset, p) for p in range(log.partitions)}
            yield "event: ready\ndata: live\n\n"
            while True:
                batch = await client.events(start=dict(positions), limit=500)
                for event in batch:
                    positions[event.partition] = event.offset + 1
                    if not _wanted(event, wanted_type, wanted_key):
                        continue
                    html = row.render(e=_event_view(event)).replace("\n", " ")
                    yield f"event: logged\ndata: {html}\n\n"
                if not batch:
                    await asyncio.sleep(POLL)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # -- dead letters ------------------------------------------------------------------------

    @routes.get("/ui/dead-letters")
    async def dead_letters(request: Request) -> Response:
        async def build() -> Response:
            q = request.query_params
            _only(q.keys(), {"replayed", "deleted", "delete_requested"})
            letters = await client.dead_letters()
            groups: dict[str, list[Any]] = {}
            for letter in letters:
                groups.setdefault(letter.reason, []).append(_letter_view(letter))
            return render(
                "dead_letters.html",
                active="dead-letters",
                title="Dead letters",
                groups=sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])),
                total=len(letters),
                replayed=q.get("replayed"),
                deleted=q.get("deleted"),
                delete_requested=q.get("delete_requested"),
            )

        return await page("dead-letters", build)

    @routes.post("/ui/dead-letters/replay")
    async def replay(request: Request) -> Response:
        async def build() -> Response:
            ids = await _chosen(request, "replay")
            replayed = 0
            for letter_id in ids:
                try:
                    await client.replay_dead_letter(letter_id)
                    replayed += 1
                except NotFound:
                    continue  # replayed (and removed) by the engine meanwhile
            return RedirectResponse(f"/ui/dead-letters?replayed={replayed}", status_code=303)

        return await page("dead-letters", build)

    @routes.post("/ui/dead-letters/delete")
    async def delete(request: Request) -> Response:
        async def build() -> Response:
            ids = await _chosen(request, "delete")
            outcome = await client.delete_dead_letters(ids, reason="deleted on the dashboard")
            word = "deleted" if outcome.done else "delete_requested"
            return RedirectResponse(f"/ui/dead-letters?{word}={len(outcome.ids)}", status_code=303)

        return await page("dead-letters", build)

    async def _chosen(request: Request, verb: str) -> list[str]:
        """The dead letters a form of the page names: one (``only``), every one with a
        reason, or the checked ones; all of them must exist (else nothing is done)."""
        _same_origin(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        letters = await client.dead_letters()
        if form.get("only"):
            ids = form["only"][:1]
        elif form.get("reason"):
            reason = form["reason"][0]
            ids = [letter.id for letter in letters if letter.reason == reason]
            if not ids:
                raise BadRequest(f"reason: no dead letter has the reason {reason!r}")
        elif form.get("id"):
            ids = list(dict.fromkeys(form["id"]))
        else:
            raise BadRequest(f"select the dead letters to {verb} (none was selected)")
        known = {letter.id for letter in letters}
        missing = [i for i in ids if i not in known]
        if missing:
            done = "replayed" if verb == "replay" else "deleted"
            raise NotFound(f"no dead letter(s) {', '.join(map(repr, missing))}; nothing was {done}")
        return ids

    # -- processes ----------------------------------------------------------------------------

    @routes.get("/ui/processes")
    async def processes(request: Request) -> Response:
        async def build() -> Response:
            definitions = sorted(app.processes, key=lambda d: (d.name, d.version))
            handlers = [h for t in app.event_types for h in app.handlers(t)]
            return render(
                "processes.html",
                active="processes",
                title="Processes",
                definitions=definitions,
                handlers=handlers,
                graph=_graph(definitions, handlers),
            )

        return await page("processes", build)

    return routes


# -- parameters -------------------------------------------------------------------------------


def _only(names: Any, allowed: set[str]) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"this page takes {', '.join(sorted(allowed))}"
        )


def _text(q: Any, name: str) -> str | None:
    value = q.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _status(q: Any) -> str | None:
    value = _text(q, "status")
    if value is None:
        return None
    names = [str(s) for s in Status]
    if value not in names:
        raise BadRequest(f"status: {value!r} is not a status (one of {', '.join(names)})")
    return value


def _moment(q: Any, name: str) -> datetime | None:
    value = _text(q, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name}: {value!r} is not a time (use YYYY-MM-DDTHH:MM, UTC, or RFC 3339)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _limit(q: Any) -> int:
    value = _text(q, "limit")
    if value is None:
        return PAGE_SIZES[1]
    if not value.isdigit() or int(value) not in PAGE_SIZES:
        raise BadRequest(f"limit: {value!r} is not a page size (one of {PAGE_SIZES})")
    return int(value)


def _same_origin(request: Request) -> None:
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if site is not None and site not in ("same-origin", "none"):
        raise _Forbidden()
    if origin is not None and origin != "null" and urlsplit(origin).netloc != host:
        raise _Forbidden()


class _Forbidden(BadRequest):
    def __init__(self) -> None:
        super().__init__("this action is only accepted from the dashboard's own pages")


# -- views ---------------------------------------------------------------------------------


async def _touched(client: Any, app: Any, event_ids: list[str | None]) -> dict[str, list[str]]:
    """The instances each emitted event started (by the ids the engine derives)."""
    out: dict[str, list[str]] = {}
    for event_id in event_ids:
        if event_id is None or event_id in out:
            continue
        record = await read(client, client.backend.log.find_event, event_id)
        if record is None:
            continue
        try:
            envelope = client.sync.codec.from_bytes(record.value)
        except OvertureError:
            continue
        ids = [instance_id_for(d.name, envelope) for d in app.triggers(envelope.type)]
        existing = await read(client, client.backend.store.existing, ids)
        out[event_id] = [i for i in ids if i in existing]
    return out


def _wanted(event: LoggedEvent, wanted_type: str | None, wanted_key: str | None) -> bool:
    if wanted_type is None and wanted_key is None:
        return True
    envelope = event.envelope
    if envelope is None:  # an undecodable record has neither type nor key
        return False
    if wanted_type is not None and envelope.type != wanted_type:
        return False
    return wanted_key is None or envelope.partitionkey == wanted_key


def _event_view(event: LoggedEvent) -> dict[str, Any]:
    envelope = event.envelope
    if envelope is None:
        return {
            "partition": event.partition,
            "offset": event.offset,
            "type": None,
            "error": event.error,
            "raw": _shown(event.raw),
        }
    return {
        "partition": event.partition,
        "offset": event.offset,
        "type": envelope.type,
        "id": envelope.id,
        "key": envelope.partitionkey,
        "time": envelope.time.isoformat() if envelope.time else None,
        "data": orjson.dumps(envelope.data).decode(),
        "error": None,
    }


def _letter_view(letter: Any) -> dict[str, Any]:
    return {
        "id": letter.id,
        "created": letter.created,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "source": letter.source,
        "event_type": letter.event_type,
        "key": letter.key,
        "value": _shown(letter.value),
    }


def _shown(raw: bytes) -> dict[str, Any]:
    """Bytes as text when they are UTF-8 (escaped by the template), else as hex."""
    try:
        return {"text": raw.decode("utf-8"), "hex": None, "size": len(raw)}
    except UnicodeDecodeError:
        return {"text": None, "hex": _hexdump(raw), "size": len(raw)}


def _hexdump(raw: bytes) -> str:
    lines = []
    for at in range(0, len(raw), 16):
        chunk = raw[at : at + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:08x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(lines)


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return ""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _graph(definitions: list[Any], handlers: list[Any]) -> dict[str, Any]:
    """Who emits which event type and who reacts to it, laid out in three columns:
    emitters (processes), event types, reactors (processes started or waiting, and
    handlers)."""
    types = sorted(
        {d.trigger for d in definitions}
        | {t for d in definitions for t in (*d.waits, *d.emits)}
        | {h.event_type for h in handlers}
    )
    names = sorted({d.name for d in definitions})
    reactors = names + sorted({f"handler {h.name}" for h in handlers})
    row = 34
    y_type = {t: 30 + i * row for i, t in enumerate(types)}
    y_emit = {n: 30 + i * row for i, n in enumerate(names)}
    y_react = {n: 30 + i * row for i, n in enumerate(reactors)}
    edges = []
    for d in definitions:
        for t in d.emits:
            edges.append(
                {"x1": 200, "y1": y_emit[d.name], "x2": 330, "y2": y_type[t], "kind": "emits"}
            )
        edges.append(
            {"x1": 530, "y1": y_type[d.trigger], "x2": 660, "y2": y_react[d.name], "kind": "starts"}
        )
        for t in d.waits:
            edges.append(
                {"x1": 530, "y1": y_type[t], "x2": 660, "y2": y_react[d.name], "kind": "waits"}
            )
    for h in handlers:
        edges.append(
            {
                "x1": 530,
                "y1": y_type[h.event_type],
                "x2": 660,
                "y2": y_react[f"handler {h.name}"],
                "kind": "handles",
            }
        )
    unique = {tuple(sorted(e.items())): e for e in edges}
    height = 40 + row * max(len(types), len(names), len(reactors), 1)
    return {
        "types": [{"name": t, "y": y} for t, y in y_type.items()],
        "emitters": [{"name": n, "y": y} for n, y in y_emit.items()],
        "reactors": [{"name": n, "y": y} for n, y in y_react.items()],
        "edges": list(unique.values()),
        "height": height,
    }
