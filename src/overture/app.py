"""The application registry: event types, processes and handlers. No globals.

An app only *knows* the contracts; events are validated against them, and made typed
events of them, by the codec (``overture.codec.Codec``, whose ``Contracts`` protocol an
``App`` satisfies).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from . import protocol
from .codec import PayloadCodec
from .core.context import Context
from .core.machine import ProcessSpec
from .errors import ConfigError
from .events import Event
from .policies import DEFAULT_RETRY, Retry
from .streams.aggregates import Aggregation
from .streams.operator import StreamDef
from .streams.patterns import Pattern, PatternOperator
from .streams.time import seconds
from .streams.windows import Emit, WindowOperator, WindowSpec
from .tasks import TaskDef

F = TypeVar("F", bound=Callable[..., Any])
ProcessFn = Callable[[Context, Any], Coroutine[Any, Any, Any]]
KeySpec = Callable[[Any], Any] | str | None


@dataclass(frozen=True, slots=True)
class ProcessDef:
    """A registered process definition (one version of it)."""

    spec: ProcessSpec
    trigger: str
    key: KeySpec
    waits: tuple[str, ...] = ()
    """Event types the process declared it waits for (``waits=``)."""
    emits: tuple[str, ...] = ()
    """Event types the process declared it emits (``emits=``)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    def key_of(self, event: Event) -> str | None:
        """The correlation key of the instance this trigger starts."""
        if self.key is None:
            return event.partitionkey
        value = getattr(event, self.key) if isinstance(self.key, str) else self.key(event)
        return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class HandlerDef:
    """A registered ``@app.on`` handler."""

    name: str
    event_type: str
    event_class: type[Event]
    fn: Callable[[Any], Any]
    retry: Retry


class App:
    """An Overture application: the registry an engine runs.

    Example::

        app = ov.App("shop")

        @app.process(trigger=OrderPlaced, key="order_id")
        async def fulfil(ctx: ov.Context, order: OrderPlaced) -> str: ...

    Args:
        name: the app's name (the default consumer group is ``engine:<name>``).
        payload_codec: encodes the data of every event this app's clients and engines
            write, and decodes what they read (compression, encryption; see
            ``overture.codec.PayloadCodec``). Declared on the app because every side
            must use the same one: ``overture run`` and ``overture send --app`` then do.
    """

    def __init__(self, name: str, *, payload_codec: PayloadCodec | None = None) -> None:
        if not name:
            raise ConfigError("an App needs a name")
        self.name = name
        self.payload_codec = payload_codec
        self._events: dict[str, type[Event]] = {}
        self._declared: set[str] = set()  # types named by string in waits=/emits=
        self._waiters: dict[str, set[str]] = {}  # type -> processes that wait_for it
        self._processes: dict[str, dict[int, ProcessDef]] = {}
        self._triggers: dict[str, list[ProcessDef]] = {}
        self._handlers: dict[str, list[HandlerDef]] = {}
        self._handler_names: dict[str, HandlerDef] = {}
        self._tasks: dict[str, TaskDef] = {}
        self._streams: dict[str, StreamDef] = {}  # stream operators by name (streams/)

    # -- registration -------------------------------------------------------------------

    def event(self, *classes: type[Event]) -> None:
        """Register event contracts so that events of these types are validated on send
        and decoded on receipt (triggers and handlers register theirs automatically)."""
        for cls in classes:
            self._register_event(cls)

    def process(
        self,
        *,
        trigger: type[Event] | str,
        key: KeySpec = None,
        name: str | None = None,
        version: int = 1,
        waits: Iterable[type[Event] | str] = (),
        emits: Iterable[type[Event] | str] = (),
    ) -> Callable[[ProcessFn], ProcessFn]:
        """Register ``async def fn(ctx, event)`` as a process started by ``trigger`` events.

        Args:
            trigger: the event class (or type name) that starts an instance.
            key: the instance's correlation key: a data attribute name or a callable on the
                event; defaults to the event's ``partitionkey``.
            name: the process name (default: the function's name).
            version: the definition version. Running instances stay on the version they
                started with; new instances use the newest registered version.
            waits: the event classes (or type names) the process waits for with
                ``ctx.wait_for``. The app then knows them: a client with the app validates
                them and derives their key from their ``key=`` field, the engine validates
                them on receipt, and sending one without a key is refused (a wait is always
                keyed, so a keyless event could never be delivered to it).
            emits: the event classes (or type names) the process publishes with
                ``ctx.emit``, so that the app knows and validates them too.
        """
        event_type, cls = self._resolve(trigger)
        wait_types = tuple(self._declare(e) for e in waits)
        emit_types = tuple(self._declare(e) for e in emits)

        def register(fn: ProcessFn) -> ProcessFn:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"process {fn.__qualname__} must be an async def")
            pname = name or fn.__name__
            versions = self._processes.setdefault(pname, {})
            if version in versions:
                raise ConfigError(f"process {pname!r} version {version} is already registered")
            spec = ProcessSpec(pname, version, fn, cls, self.name)
            definition = ProcessDef(spec, event_type, key, wait_types, emit_types)
            for waited in wait_types:
                self._waiters.setdefault(waited, set()).add(pname)
            versions[version] = definition
            triggers = [d for d in self._triggers.get(event_type, []) if d.name != pname]
            newest = versions[max(versions)]
            self._triggers[event_type] = [*triggers, newest]
            return fn

        return register

    def on(
        self, event: type[Event] | str, *, retry: Retry | None = None, name: str | None = None
    ) -> Callable[[F], F]:
        """Register a handler: called at least once per event of that type, retried per
        ``retry``, dead-lettered when retries are exhausted."""
        event_type, cls = self._resolve(event)

        def register(fn: F) -> F:
            hname = name or f"{fn.__module__}.{fn.__qualname__}"
            if hname in self._handler_names:
                raise ConfigError(f"handler {hname!r} is already registered")
            handler = HandlerDef(hname, event_type, cls, fn, retry or DEFAULT_RETRY)
            self._handler_names[hname] = handler
            self._handlers.setdefault(event_type, []).append(handler)
            return fn

        return register

    def task(
        self,
        name: str,
        *,
        queue: str | None = None,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        url: str | None = None,
        secret_env: str | None = None,
    ) -> Callable[[F], F]:
        """Define a remote task: ``def`` or ``async def (input) -> output``, run by a
        worker (``overture worker``; ``overture run`` runs the app's tasks in-process too)
        and called from a process with ``await ctx.call(name, input)``.

        A task with a ``url`` is a push task: its attempts are POSTed to the URL, signed
        per Standard Webhooks with the secret in the environment variable ``secret_env``
        (the decorated function then only documents the input and output). It is
        registered by this call, so ``app.task(name, url=..., secret_env=...)`` alone
        defines it.

        Args:
            name: the task's name, e.g. ``"shipping.create"``.
            queue: the queue its attempts go to (default ``"default"``).
            retry: the retry policy (a call's ``retry=`` overrides it).
            timeout: how long one attempt may take before the engine gives it up and
                retries (a call's ``timeout=`` overrides it); None: no deadline.
            url: the endpoint of a push task.
            secret_env: the variable holding a push task's signing secret.
        """
        if not name or protocol.is_reserved(name):
            raise ConfigError(f"a task needs a name outside {protocol.RESERVED_PREFIX!r}")
        if name in self._tasks:
            raise ConfigError(f"task {name!r} is already defined")
        problem = None if queue is None else protocol.queue_problem(queue)
        if problem is not None:
            raise ConfigError(f"task {name!r}: {problem}")
        if timeout is not None and timeout <= timedelta(0):
            raise ConfigError(f"task {name!r}: timeout must be positive")
        if secret_env is not None and url is None:
            raise ConfigError(f"task {name!r}: secret_env= is for a push task (url=)")
        if url is not None and not secret_env:
            raise ConfigError(
                f"task {name!r}: a push task needs secret_env=, the environment variable "
                "holding its Standard Webhooks signing secret (every push is signed)"
            )

        def definition(fn: Callable[[Any], Any] | None) -> TaskDef:
            return TaskDef(
                name,
                fn,
                queue or protocol.DEFAULT_QUEUE,
                retry or DEFAULT_RETRY,
                None if timeout is None else timeout.total_seconds(),
                url,
                secret_env,
            )

        if url is not None:
            self._tasks[name] = definition(None)

        def register(fn: F) -> F:
            if url is None:
                self._tasks[name] = definition(fn)
            return fn

        return register

    # -- streams: operators (streams/operator.py) ----------------------------------------

    def add_stream(self, definition: StreamDef) -> None:
        """Register a stream operator (``@app.window`` and ``@app.pattern`` call this).

        Raises:
            ConfigError: another operator has the same name.
        """
        name = definition.name
        if not name:
            raise ConfigError("a stream operator needs a name")
        if name in self._streams:
            raise ConfigError(f"stream operator {name!r} is defined twice")
        for source in definition.operator.sources:
            self._declare(source)
        self._streams[name] = definition

    def window(
        self,
        *,
        source: type[Event] | str | Sequence[type[Event] | str],
        key: Callable[[Any], Any] | str,
        window: WindowSpec,
        aggregate: Mapping[str, Aggregation],
        grace: timedelta = timedelta(0),
        emit: Emit = "on_close",
        idle: timedelta | Literal["default"] | None = "default",
        time_field: str | None = None,
        on_late: Callable[[Any], Any] | None = None,
        retry: Retry | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register a windowed aggregation: its callback gets a ``WindowResult`` and
        returns an event, a list of events or None (see docs/streams.md).

        Args:
            source: the event class or type name read (or several).
            key: the data field giving the window key, or a callable of the event;
                events keyed otherwise in the log are re-keyed by it.
            window: ``Tumbling(size)``, ``Hopping(size, every)``, ``Sliding(size)`` or
                ``Session(gap)``.
            aggregate: the aggregations by name (``WindowResult.values`` keys).
            grace: event-time lateness accepted; the watermark is the newest event time
                seen on the partition minus this.
            emit: ``"on_close"`` (once, when the watermark passes the window's end) or
                ``"every_update"`` (each event that changes a window).
            idle: after this much engine-clock time the watermark of a silent partition
                follows the clock (``now - idle - grace``), so the last windows close;
                default: the grace, at least one second; None: only events move it.
            time_field: the data field with the event time (ISO-8601 or epoch seconds);
                default the CloudEvents ``time``.
            on_late: called with each late event.
            retry: how a raising callback is tried again before its result is
                dead-lettered (default: as handlers).
            name: the operator's name (default: the function's name); ``client.window``
                and ``overture windows`` use it.

        Raises:
            ConfigError: an invalid option.
        """
        sources = [source] if isinstance(source, str | type) else list(source)
        if not sources:
            raise ConfigError("source= needs at least one event type")
        types = tuple(self._resolve(s)[0] for s in sources)
        grace_s, idle_s = _stream_times(grace, idle)

        def operator(fn: Callable[..., Any]) -> WindowOperator:
            return WindowOperator(
                name=name or fn.__name__,
                sources=types,
                key=key,
                window=window,
                aggregate=aggregate,
                grace=grace_s,
                idle=idle_s,
                time_field=time_field,
                emit=emit,
            )

        return self._stream_decorator("@app.window", operator, on_late, retry)

    def pattern(
        self,
        pattern: Pattern,
        *,
        key: Callable[[Any], Any] | str,
        grace: timedelta = timedelta(0),
        idle: timedelta | Literal["default"] | None = "default",
        time_field: str | None = None,
        on_late: Callable[[Any], Any] | None = None,
        retry: Retry | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register an event pattern (``ov.begin(...)``): its callback gets an ``ov.Match``
        and returns an event, a list of events or None (see docs/streams.md "Patterns").

        Args:
            pattern: built with ``ov.begin(T).followed_by(...)...``.
            key: the data field giving the pattern key, or a callable of the event.
            grace: event-time lateness accepted (the watermark trails the newest time).
            idle: after this much engine-clock silence the watermark of a partition
                follows the clock (so absence patterns fire); default: the grace, at
                least one second; None: only events move it.
            time_field: the data field with the event time; default CloudEvents ``time``.
            on_late: called with each late event.
            retry: how a raising callback is tried again before its match is
                dead-lettered (default: as handlers).
            name: the operator's name (default: the function's name).

        Raises:
            ConfigError: an invalid pattern or option.
        """
        if not isinstance(pattern, Pattern):
            raise ConfigError("@app.pattern needs a pattern built with ov.begin(...)")
        classes: dict[str, type[Event]] = {}
        for stage in pattern.stages:
            type_name, cls = self._resolve(stage.type)
            classes[type_name] = cls
        grace_s, idle_s = _stream_times(grace, idle)

        def operator(fn: Callable[..., Any]) -> PatternOperator:
            return PatternOperator(
                name=name or fn.__name__,
                pattern=pattern,
                key=key,
                grace=grace_s,
                idle=idle_s,
                time_field=time_field,
                classes=classes,
            )

        return self._stream_decorator("@app.pattern", operator, on_late, retry)

    def _stream_decorator(
        self,
        what: str,
        operator: Callable[[Callable[..., Any]], Any],
        on_late: Callable[[Any], Any] | None,
        retry: Retry | None,
    ) -> Callable[[F], F]:
        """The decorator of ``@app.window`` and ``@app.pattern``: the function becomes the
        callback of the operator made for it."""

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigError(f"{what} decorates a function")
            self.add_stream(StreamDef(operator(fn), fn, on_late, retry or DEFAULT_RETRY))
            return fn

        return register

    @property
    def streams(self) -> list[StreamDef]:
        """The registered stream operators, in registration order."""
        return list(self._streams.values())

    def stream(self, name: str) -> StreamDef | None:
        return self._streams.get(name)

    # -- lookups used by the runtime and the client ---------------------------------------

    def task_def(self, name: str) -> TaskDef | None:
        """The task defined under ``name`` (None: not defined by this app, e.g. one a
        worker in another language serves)."""
        return self._tasks.get(name)

    @property
    def tasks(self) -> list[TaskDef]:
        return list(self._tasks.values())

    def event_class(self, event_type: str) -> type[Event] | None:
        return self._events.get(event_type)

    def triggers(self, event_type: str) -> list[ProcessDef]:
        return self._triggers.get(event_type, [])

    def handlers(self, event_type: str) -> list[HandlerDef]:
        return self._handlers.get(event_type, [])

    def waiters(self, event_type: str) -> list[str]:
        """The processes that declared (``waits=``) they wait for events of this type."""
        return sorted(self._waiters.get(event_type, ()))

    def handler(self, name: str) -> HandlerDef | None:
        return self._handler_names.get(name)

    def definition(self, process: str, version: int) -> ProcessDef | None:
        return self._processes.get(process, {}).get(version)

    @property
    def processes(self) -> list[ProcessDef]:
        return [d for versions in self._processes.values() for d in versions.values()]

    @property
    def event_types(self) -> list[str]:
        names = set(self._events) | set(self._triggers) | set(self._handlers) | self._declared
        return sorted(names)

    # -- helpers -------------------------------------------------------------------------

    def _resolve(self, event: type[Event] | str) -> tuple[str, type[Event]]:
        if isinstance(event, str):
            if not event:
                raise ConfigError("an event type must be a non-empty string")
            return event, self._events.get(event, Event)
        if not (isinstance(event, type) and issubclass(event, Event)) or not event.event_type:
            raise ConfigError(f"{event!r} is not an Event subclass declared with type=...")
        self._register_event(event)
        return event.event_type, event

    def _declare(self, event: type[Event] | str) -> str:
        """Register an event class, or remember a type name, that a process declared."""
        event_type, _ = self._resolve(event)
        if isinstance(event, str):
            self._declared.add(event_type)
        return event_type

    def _register_event(self, cls: type[Event]) -> None:
        if cls.event_type is None:
            raise ConfigError(f"{cls.__name__} has no type=...")
        existing = self._events.get(cls.event_type)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"event type {cls.event_type!r} is defined twice: {existing.__name__} and "
                f"{cls.__name__}"
            )
        self._events[cls.event_type] = cls


def _stream_times(
    grace: timedelta, idle: timedelta | Literal["default"] | None
) -> tuple[float, float | None]:
    """A stream operator's grace and idle timeout in seconds: idle defaults to the grace,
    at least one second; None (only events move the watermark) stays None."""
    grace_s = seconds(grace, "grace", positive=False)
    if idle == "default":
        return grace_s, max(grace_s, 1.0)
    if idle is None:
        return grace_s, None
    return grace_s, seconds(idle, "idle", positive=False)
