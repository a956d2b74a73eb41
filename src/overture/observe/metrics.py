"""Prometheus metrics of an engine and of its store (docs/observability.md).

:class:`MetricsObserver` is an :class:`~overture.runtime.observer.Observer` that counts
what the engine reports (events consumed, instances started and finished, step and task
attempts, commits, dead letters, timers) into its own ``CollectorRegistry``: several
engines in one process (tests, ``Host``) each keep their own figures.

:class:`StoreCollector` reads at scrape time what the store knows whichever process
asks (instances by status per process, dead letters by source), so ``overture serve``, an
API with no engine inside, exposes it too. It is computed at scrape time rather than kept
incrementally so that it is right after a restart, and from every engine's work, not
only this process's.

Labels are of bounded cardinality only (process, step, task, queue, source, status,
outcome, partition), never instance ids.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..client import Client
from ..runtime.observer import Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of the text exposition format (what ``/metrics`` answers)."""

BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Buckets of the commit batch sizes (rows, appends): counts, not seconds."""
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
)  # fmt: skip
"""Buckets of the durations, in seconds: ``prometheus_client``'s default (+Inf implied)."""


class _Metric:
    """One metric family's figures as plain numbers, by label values.

    ``values`` maps the label values (one string for one label, a tuple for several, ``()``
    for none; an int partition is made a string at scrape time) to a number (counter,
    gauge) or, for a histogram, to a list of per-bucket counts (not cumulative; the last
    bucket is +Inf) followed by the sum. ``created`` holds each child's creation time, as
    ``prometheus_client`` exposes it (``_created``).
    """

    __slots__ = ("bounds", "created", "documentation", "kind", "labels", "name", "values")

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labels: tuple[str, ...] = (),
        bounds: tuple[float, ...] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = bounds  # a histogram's upper bounds, +Inf left out
        self.values: dict[Any, Any] = {}
        self.created: dict[Any, float] = {}
        if not labels and kind != "gauge":  # exposed at zero from the start, as before
            self.new(())

    def new(self, key: Any) -> Any:
        """The figures of a new child ``key`` (zero), remembered with its creation time."""
        self.created[key] = time.time()
        value: Any = [0] * (len(self.bounds) + 2) if self.kind == "histogram" else 0
        self.values[key] = value
        return value

    def family(self, created: bool) -> Metric:
        """The family as the registry exposes it (read at each scrape)."""
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            stamps = self.created
            for key, value in list(self.values.items()):
                counter.add_metric(_label_values(key), value, stamps[key] if created else None)
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
            for key, value in list(self.values.items()):
                gauge.add_metric(_label_values(key), value)
            return gauge
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [*map(floatToGoString, self.bounds), "+Inf"]
        for key, figures in list(self.values.items()):
            figures = list(figures)  # one copy: the buckets' total is the count it shows
            labels = _label_values(key)
            histogram.add_metric(
                labels, list(zip(edges, accumulate(figures[:-1]), strict=True)), figures[-1]
            )
            if created:
                histogram.samples.append(
                    Sample(
                        self.name + "_created",
                        dict(zip(self.labels, labels, strict=True)),
                        self.created[key],
                    )
                )
        return histogram

    def described(self) -> Metric:
        """The family without samples (the registry's duplicate check)."""
        kinds = {
            "counter": CounterMetricFamily,
            "gauge": GaugeMetricFamily,
            "histogram": HistogramMetricFamily,
        }
        family: Metric = kinds[self.kind](self.name, self.documentation, labels=self.labels)
        return family


def _label_values(key: Any) -> list[str]:
    if isinstance(key, tuple):
        return [str(value) for value in key]
    return [str(key)]


class _Collector(Collector):
    """What the registry reads a :class:`MetricsObserver`'s figures through."""

    def __init__(self, metrics: list[_Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        # PROMETHEUS_DISABLE_CREATED_SERIES and disable_created_metrics(), as its own
        # metrics obey them (the flag has no public reader)
        created = bool(getattr(prometheus_metrics, "_use_created", True))
        for metric in self.metrics:
            yield metric.family(created)

    def describe(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.described()


class MetricsObserver(Observer):
    """An observer keeping Prometheus metrics of the engine it is passed to.

    Pass it as ``EngineOptions(observer=MetricsObserver())`` (or combined with others by
    ``observer.combine``) and serve :attr:`registry` (:func:`exposition`).

    The hooks count into plain ints and floats (a dictionary update each, a ``bisect``
    for a histogram's bucket) on the engine's thread; a scrape reads them through a
    custom collector, in another thread maybe. Rejected design: ``prometheus_client``'s
    ``Counter``/``Histogram`` updated in the hooks: a lock and a value object per update,
    and a lock per bucket, cost about a tenth of a W1 instance's CPU
    (docs/benchmarks.md). Without a lock, a scrape racing an observation may show its
    count one ahead of its sum; each histogram's +Inf bucket and count are one copy's.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        """The registry holding these metrics (a new one by default, not the global)."""
        seconds = DEFAULT_BUCKETS
        self._batches = _Metric(
            "counter",
            "overture_batches_consumed",
            "Batches of log records consumed.",
            ("partition",),
        )
        self._records = _Metric(
            "counter",
            "overture_records_consumed",
            "Log records (events) read into a batch.",
            ("partition",),
        )
        self._started = _Metric(
            "counter", "overture_instances_started", "Instances started by a trigger.", ("process",)
        )
        self._finished = _Metric(
            "counter",
            "overture_instances_finished",
            "Instances that reached a final status (completed, failed, cancelled).",
            ("process", "status"),
        )
        self._parked = _Metric(
            "counter", "overture_instances_parked", "Instances parked as stuck.", ("process",)
        )
        self._steps = _Metric(
            "histogram",
            "overture_step_attempt_duration_seconds",
            "Duration of step (or handler) attempts until the engine took their outcome.",
            ("step", "outcome"),
            seconds,
        )
        self._step_retries = _Metric(
            "counter",
            "overture_step_retries",
            "Step attempts after the first (retries).",
            ("step",),
        )
        self._tasks_published = _Metric(
            "counter",
            "overture_task_attempts_published",
            "Remote task attempts published to their queue.",
            ("task", "queue"),
        )
        self._task_retries = _Metric(
            "counter",
            "overture_task_retries",
            "Task attempts after the first (retries).",
            ("task",),
        )
        self._tasks = _Metric(
            "histogram",
            "overture_task_attempt_duration_seconds",
            "Duration of remote task attempts, from publication to the result the engine"
            " applied (attempts published by this process only).",
            ("task", "outcome"),
            seconds,
        )
        self._tasks_finished = _Metric(
            "counter",
            "overture_task_attempts_finished",
            "Remote task attempts ended (completed, failed, timed out).",
            ("task", "outcome"),
        )
        self._results_dropped = _Metric(
            "counter",
            "overture_task_results_dropped",
            "Task results that changed nothing (stale, duplicate, late).",
        )
        self._commits = _Metric(
            "histogram",
            "overture_commit_duration_seconds",
            "Duration of batch commits until durable.",
            bounds=seconds,
        )
        self._commit_rows = _Metric(
            "histogram", "overture_commit_rows", "State rows per commit.", bounds=BATCH_BUCKETS
        )
        self._commit_appends = _Metric(
            "histogram",
            "overture_commit_appends",
            "Events appended per commit.",
            bounds=BATCH_BUCKETS,
        )
        self._dead_letters = _Metric(
            "counter", "overture_dead_letters", "Inputs dead-lettered.", ("source",)
        )
        self._lateness = _Metric(
            "histogram",
            "overture_timer_lateness_seconds",
            "How late durable timers fired after they were due.",
            bounds=seconds,
        )
        self._tasks_open = _Metric(
            "gauge",
            "overture_task_attempts_open",
            "Remote task attempts open (published, not ended) per queue, in this engine.",
            ("queue",),
        )
        self._cache_hits = _Metric(
            "counter",
            "overture_instance_cache_hits",
            "Inputs that found their instance in the engine's cache.",
            ("process",),
        )
        self._replays = _Metric(
            "counter",
            "overture_instance_replays",
            "Instances rebuilt by replaying their journal (evicted, or after a restart).",
            ("process",),
        )
        self._replayed_entries = _Metric(
            "counter",
            "overture_instance_replayed_entries",
            "Journal entries replayed to rebuild instances.",
            ("process",),
        )
        self.registry.register(
            _Collector([m for m in vars(self).values() if isinstance(m, _Metric)])
        )
        # publication times of outstanding task attempts, for their duration; bounded by
        # the attempts outstanding (an entry leaves when its attempt ends)
        self._published: dict[tuple[str, str, int], float] = {}

    @staticmethod
    def _count(metric: _Metric, key: Any, amount: float = 1) -> None:
        values = metric.values
        if key in values:
            values[key] += amount
        else:
            metric.new(key)
            values[key] += amount

    @staticmethod
    def _observe(metric: _Metric, key: Any, amount: float) -> None:
        figures = metric.values.get(key)
        if figures is None:
            figures = metric.new(key)
        figures[bisect_left(metric.bounds, amount)] += 1
        figures[-1] += amount

    def batch_consumed(self, partition: int, records: int) -> None:
        self._count(self._batches, partition)
        self._count(self._records, partition, records)

    # (the hooks called per instance and per step spell _count and _observe out: a call
    # less each, a third of what they cost)

    def instance_started(self, instance_id: str, process: str) -> None:
        values = self._started.values
        if process in values:
            values[process] += 1
        else:
            self._count(self._started, process)

    def instance_finished(self, instance_id: str, process: str, status: str) -> None:
        key = (process, str(status))
        values = self._finished.values
        if key in values:
            values[key] += 1
        else:
            self._count(self._finished, key)

    def instance_parked(self, instance_id: str, process: str, reason: str) -> None:
        self._count(self._parked, process)

    def step_finished(
        self, name: str, attempt: int, instance_id: str | None, ok: bool, duration: float
    ) -> None:
        steps = self._steps
        key = (name, "ok" if ok else "error")
        figures = steps.values.get(key)
        if figures is None:
            figures = steps.new(key)
        figures[bisect_left(steps.bounds, duration)] += 1
        figures[-1] += duration
        if attempt > 1:
            self._count(self._step_retries, name)

    def task_published(self, task: str, attempt: int, instance_id: str, queue: str) -> None:
        self._count(self._tasks_published, (task, queue))
        if attempt > 1:
            self._count(self._task_retries, task)
        self._published[(instance_id, task, attempt)] = time.monotonic()

    def task_finished(self, task: str, attempt: int, instance_id: str, outcome: str) -> None:
        self._count(self._tasks_finished, (task, outcome))
        start = self._published.pop((instance_id, task, attempt), None)
        if start is not None:  # published before a restart: its start is unknown
            self._observe(self._tasks, (task, outcome), time.monotonic() - start)

    def task_result_dropped(self, attempt_id: str, reason: str) -> None:
        self._results_dropped.values[()] += 1

    def commit_finished(self, rows: int, appends: int, duration: float) -> None:
        self._observe(self._commits, (), duration)
        self._observe(self._commit_rows, (), rows)
        self._observe(self._commit_appends, (), appends)

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        self._count(self._dead_letters, source)

    def timer_fired(self, instance_id: str, lateness: float) -> None:
        self._observe(self._lateness, (), max(lateness, 0.0))

    def tasks_open(self, queue: str, count: int) -> None:
        self._tasks_open.values[queue] = count

    def instance_loaded(self, instance_id: str, process: str, replayed: int | None) -> None:
        if replayed is None:
            self._count(self._cache_hits, process)
        else:
            self._count(self._replays, process)
            self._count(self._replayed_entries, process, replayed)

    def __repr__(self) -> str:
        return "MetricsObserver()"


class StoreCollector(Collector):
    """Gauges read from the store at each scrape: instances by status per process, the
    dead letters parked by source, and (for a client of the app) the engines' consumer
    lag per partition."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "overture_instances",
            "Instances in the store, by process and status.",
            labels=["process", "status"],
        )
        for (process, status), count in self.client.instance_counts().items():
            instances.add_metric([process, status], count)
        yield instances
        parked = GaugeMetricFamily(
            "overture_dead_letters_parked",
            "Dead letters in the store (not yet replayed or discarded), by source.",
            labels=["source"],
        )
        for source, count in sorted(Tally(d.source for d in self.client.dead_letters()).items()):
            parked.add_metric([source], count)
        yield parked
        if self.client.app is not None:  # the engines' group is the app's
            lag = GaugeMetricFamily(
                "overture_consumer_lag",
                "Log records per partition the engines have not consumed yet.",
                labels=["partition"],
            )
            for partition, behind in self.client.lag().items():
                lag.add_metric([str(partition)], behind)
            yield lag


def store_registry(client: Client) -> CollectorRegistry:
    """A registry of the :class:`StoreCollector` of ``client``'s store."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(client))
    return registry


class _Joined(Collector):
    def __init__(self, registries: tuple[CollectorRegistry, ...]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self.registries:
            yield from registry.collect()


def joined(*registries: CollectorRegistry) -> CollectorRegistry:
    """One registry exposing every metric of ``registries`` (read at each scrape)."""
    registry = CollectorRegistry()
    registry.register(_Joined(registries))
    return registry


class MetricsServer:
    """``GET /metrics`` of ``registry`` at ``address`` (``HOST:PORT``), served from a
    daemon thread of its own (``overture run --metrics``), until :meth:`close`.

    Raises:
        OSError: the address cannot be bound (in use, not local): at once, not later.
    """

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        host, port = address
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.address = f"{host}:{self._server.server_port}"
        """Where it listens (the real port when 0 was asked for)."""

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def exposition(*registries: CollectorRegistry) -> bytes:
    """The text exposition of ``registries`` (each metric name must be in one only)."""
    return b"".join(generate_latest(r) for r in registries)
