"""CPU per W1 instance of an observer alone, steadier than whole-engine runs on a shared
machine.

``python -m benchmarks.observer_cpu [--observe metrics,trace,trace1] [--export otlp]``
runs a W1 drain once (memory backend, ``-n`` instances) with an observer that records
every hook call the engine makes (arguments included; for the trace hooks also each
attempt's ``enter`` and ``end``), then replays those calls against a fresh
``MetricsObserver`` or ``TracingObserver`` and reports the process's CPU time (user +
system, every thread: the batch processor's export thread too, until ``force_flush``
returns) per instance, best of ``--rounds``. Traces go as in ``observing.py``: the
OTLP/HTTP exporter to :mod:`benchmarks.otlp_sink` in its own process (``--export drop``:
an exporter that drops them; ``none``: no span processor, the SDK's spans alone).

Run it against another checkout's code with ``PYTHONPATH=OTHER/src`` (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import resource
import uuid
from collections.abc import Sequence
from typing import Any

import overture as ov
from overture.backends import open_backend
from overture.runtime.observer import Observer, _hooks

from .producer import send
from .workloads import APPS

TRACE_HOOKS = (
    "record_routing",
    "record_routed",
    "segment_resumed",
    "segment_flushed",
    "emitted",
    "task_requested",
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Recorded:
    """An attempt span stand-in: records its ``enter`` and ``end``."""

    def __init__(self, calls: list[tuple[Any, ...]], index: int) -> None:
        self.calls, self.index = calls, index

    def enter(self) -> None:
        self.calls.append(("enter", self.index))

    def end(self, ok: bool, error: BaseException | None) -> None:
        self.calls.append(("end", self.index, ok))


def record(n: int, traces: bool) -> list[tuple[Any, ...]]:
    """The hook calls of a W1 drain of ``n`` instances (the trace hooks or the others)."""
    calls: list[tuple[Any, ...]] = []

    class Recorder(Observer):
        pass

    def hook(name: str) -> Any:
        def call(self: Observer, *args: Any) -> None:
            calls.append((name, args))

        return call

    names = TRACE_HOOKS if traces else [h for h in _hooks() if h not in TRACE_HOOKS]
    for name in names:
        if name not in ("attempt_trace", "instances_released"):
            setattr(Recorder, name, hook(name))
    if traces:
        Recorder.traces = True

        def attempt_trace(self: Observer, *args: Any) -> _Recorded:
            calls.append(("attempt_trace", args, len(calls)))
            return _Recorded(calls, len(calls) - 1)

        Recorder.attempt_trace = attempt_trace  # type: ignore[method-assign,assignment]

    async def drain() -> None:
        backend = open_backend(f"memory://observer-cpu-{uuid.uuid4().hex}")
        engine = ov.Engine(APPS["w1"](), backend, cache_size=10_000, observer=Recorder())
        client = ov.Client(backend, app=engine.app)
        send(client, "order", [f"o{i}" for i in range(n)], 100)
        await engine.start()
        task = asyncio.create_task(engine.run())
        while sum(v for (_, s), v in client.instance_counts().items() if s == "completed") < n:  # noqa: ASYNC110 (a poll of the store, as the benchmarks' probe)
            await asyncio.sleep(0.01)
        await engine.stop()
        await task

    asyncio.run(drain())
    return calls


def replay(observer: Any, calls: Sequence[tuple[Any, ...]]) -> None:
    attempts: dict[int, Any] = {}
    for call in calls:
        kind = call[0]
        if kind == "attempt_trace":
            attempts[call[2]] = observer.attempt_trace(*call[1])
        elif kind == "enter":  # (the executor enters it in the attempt's context copy)
            contextvars.copy_context().run(attempts[call[1]].enter)
        elif kind == "end":
            attempts.pop(call[1]).end(call[2], None)
        else:
            getattr(observer, kind)(*call[1])


def measure(kind: str, export: str, n: int, rounds: int) -> str:
    calls = record(n, traces=kind != "metrics")
    best, exported = float("inf"), None
    if kind == "metrics":
        from overture.observe.metrics import MetricsObserver

        for _ in range(rounds):
            metrics = MetricsObserver()
            started = _cpu()
            replay(metrics, calls)
            best = min(best, _cpu() - started)
        return f"metrics: {best * 1e6 / n:.1f} µs CPU per W1 instance ({len(calls) / n:.1f} calls)"
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    from overture.observe import tracing

    from .otlp_sink import Sink

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    processor = getattr(tracing, "batch_processor", BatchSpanProcessor)  # (older code)
    sink = Sink() if export == "otlp" else None
    try:
        for _ in range(rounds):
            sampler = ALWAYS_ON if kind == "trace" else ParentBased(TraceIdRatioBased(0.01))
            provider = TracerProvider(sampler=sampler)
            if sink is not None:
                provider.add_span_processor(processor(OTLPSpanExporter(endpoint=sink.endpoint)))
            elif export == "drop":
                provider.add_span_processor(processor(Dropped()))
            observer = tracing.TracingObserver(provider)
            before = 0 if sink is None else sink.spans()
            started = _cpu()
            replay(observer, calls)
            provider.force_flush()
            best = min(best, _cpu() - started)
            provider.shutdown()
            if sink is not None:
                exported = sink.spans() - before
    finally:
        if sink is not None:
            sink.close()
    spans = "" if exported is None else f", {exported / n:.2f} spans exported per instance"
    return f"{kind} (export {export}): {best * 1e6 / n:.0f} µs CPU per W1 instance{spans}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observe", default="metrics,trace,trace1")
    parser.add_argument("--export", choices=("otlp", "drop", "none"), default="otlp")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for kind in args.observe.split(","):
        if kind not in ("metrics", "trace", "trace1"):
            parser.error(f"unknown --observe {kind!r}: metrics, trace or trace1")
        print(measure(kind, args.export, args.n, args.rounds), flush=True)


if __name__ == "__main__":
    main()
