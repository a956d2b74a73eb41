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
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..client import Client
from ..runtime.observer import Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of the text exposition format (what ``/metrics`` answers)."""

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Buckets of the commit batch sizes (rows, appends): counts, not seconds."""


class MetricsObserver(Observer):
    """An observer keeping Prometheus metrics of the engine it is passed to.

    Pass it as ``EngineOptions(observer=MetricsObserver())`` (or combined with others by
    ``observer.combine``) and serve :attr:`registry` (:func:`exposition`).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        """The registry holding these metrics (a new one by default, not the global)."""
        r = self.registry
        self.batches = Counter(
            "overture_batches_consumed",
            "Batches of log records consumed.",
            ["partition"],
            registry=r,
        )
        self.records = Counter(
            "overture_records_consumed",
            "Log records (events) read into a batch.",
            ["partition"],
            registry=r,
        )
        self.started = Counter(
            "overture_instances_started", "Instances started by a trigger.", ["process"], registry=r
        )
        self.finished = Counter(
            "overture_instances_finished",
            "Instances that reached a final status (completed, failed, cancelled).",
            ["process", "status"],
            registry=r,
        )
        self.parked = Counter(
            "overture_instances_parked", "Instances parked as stuck.", ["process"], registry=r
        )
        self.steps = Histogram(
            "overture_step_attempt_duration_seconds",
            "Duration of step (or handler) attempts until the engine took their outcome.",
            ["step", "outcome"],
            registry=r,
        )
        self.step_retries = Counter(
            "overture_step_retries",
            "Step attempts after the first (retries).",
            ["step"],
            registry=r,
        )
        self.tasks_published = Counter(
            "overture_task_attempts_published",
            "Remote task attempts published to their queue.",
            ["task", "queue"],
            registry=r,
        )
        self.task_retries = Counter(
            "overture_task_retries",
            "Task attempts after the first (retries).",
            ["task"],
            registry=r,
        )
        self.tasks = Histogram(
            "overture_task_attempt_duration_seconds",
            "Duration of remote task attempts, from publication to the result the engine"
            " applied (attempts published by this process only).",
            ["task", "outcome"],
            registry=r,
        )
        self.tasks_finished = Counter(
            "overture_task_attempts_finished",
            "Remote task attempts ended (completed, failed, timed out).",
            ["task", "outcome"],
            registry=r,
        )
        self.results_dropped = Counter(
            "overture_task_results_dropped",
            "Task results that changed nothing (stale, duplicate, late).",
            registry=r,
        )
        self.commits = Histogram(
            "overture_commit_duration_seconds",
            "Duration of batch commits until durable.",
            registry=r,
        )
        self.commit_rows = Histogram(
            "overture_commit_rows", "State rows per commit.", buckets=BATCH_BUCKETS, registry=r
        )
        self.commit_appends = Histogram(
            "overture_commit_appends",
            "Events appended per commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "overture_dead_letters", "Inputs dead-lettered.", ["source"], registry=r
        )
        self.lateness = Histogram(
            "overture_timer_lateness_seconds",
            "How late durable timers fired after they were due.",
            registry=r,
        )
        self.tasks_open_gauge = Gauge(
            "overture_task_attempts_open",
            "Remote task attempts open (published, not ended) per queue, in this engine.",
            ["queue"],
            registry=r,
        )
        self.cache_hits = Counter(
            "overture_instance_cache_hits",
            "Inputs that found their instance in the engine's cache.",
            ["process"],
            registry=r,
        )
        self.replays = Counter(
            "overture_instance_replays",
            "Instances rebuilt by replaying their journal (evicted, or after a restart).",
            ["process"],
            registry=r,
        )
        self.replayed_entries = Counter(
            "overture_instance_replayed_entries",
            "Journal entries replayed to rebuild instances.",
            ["process"],
            registry=r,
        )
        # publication times of outstanding task attempts, for their duration; bounded by
        # the attempts outstanding (an entry leaves when its attempt ends)
        self._published: dict[tuple[str, str, int], float] = {}
        # the labelled children of the hooks called per instance or per step, looked up
        # once: ``labels()`` costs a lock and a tuple per call, twice what the update does
        self._children: dict[tuple[object, ...], Any] = {}

    def batch_consumed(self, partition: int, records: int) -> None:
        self.batches.labels(str(partition)).inc()
        self.records.labels(str(partition)).inc(records)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def instance_started(self, instance_id: str, process: str) -> None:
        self._child(self.started, process).inc()

    def instance_finished(self, instance_id: str, process: str, status: str) -> None:
        self._child(self.finished, process, str(status)).inc()

    def instance_parked(self, instance_id: str, process: str, reason: str) -> None:
        self.parked.labels(process).inc()

    def step_finished(
        self, name: str, attempt: int, instance_id: str | None, ok: bool, duration: float
    ) -> None:
        self._child(self.steps, name, "ok" if ok else "error").observe(duration)
        if attempt > 1:
            self._child(self.step_retries, name).inc()

    def task_published(self, task: str, attempt: int, instance_id: str, queue: str) -> None:
        self.tasks_published.labels(task, queue).inc()
        if attempt > 1:
            self.task_retries.labels(task).inc()
        self._published[(instance_id, task, attempt)] = time.monotonic()

    def task_finished(self, task: str, attempt: int, instance_id: str, outcome: str) -> None:
        self.tasks_finished.labels(task, outcome).inc()
        start = self._published.pop((instance_id, task, attempt), None)
        if start is not None:  # published before a restart: its start is unknown
            self.tasks.labels(task, outcome).observe(time.monotonic() - start)

    def task_result_dropped(self, attempt_id: str, reason: str) -> None:
        self.results_dropped.inc()

    def commit_finished(self, rows: int, appends: int, duration: float) -> None:
        self.commits.observe(duration)
        self.commit_rows.observe(rows)
        self.commit_appends.observe(appends)

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        self.dead_letters.labels(source).inc()

    def timer_fired(self, instance_id: str, lateness: float) -> None:
        self.lateness.observe(max(lateness, 0.0))

    def tasks_open(self, queue: str, count: int) -> None:
        self.tasks_open_gauge.labels(queue).set(count)

    def instance_loaded(self, instance_id: str, process: str, replayed: int | None) -> None:
        if replayed is None:
            self._child(self.cache_hits, process).inc()
        else:
            self._child(self.replays, process).inc()
            self._child(self.replayed_entries, process).inc(replayed)

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
