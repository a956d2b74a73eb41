"""The metrics observer counts in plain numbers and exposes them at scrape time: its text
exposition is pinned, sample by sample, to the one ``prometheus_client``'s own ``Counter``,
``Histogram`` and ``Gauge`` gave for the same hook calls (``golden/metrics.txt``, written by
the observer that used them), so names, labels, buckets and values stay as they were."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from prometheus_client import generate_latest

from overture.observe.metrics import MetricsObserver, exposition

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def drive(m: MetricsObserver) -> None:
    """Every hook, with fixed values (bucket edges, zero, past the last bucket, an odd label)."""
    m.batch_consumed(0, 7)
    m.batch_consumed(3, 1)
    m.batch_consumed(0, 2)
    m.instance_started("i1", "fulfil")
    m.instance_started("i2", "fulfil")
    m.instance_started("i3", 'we"ird\\n')
    m.instance_finished("i1", "fulfil", "completed")
    m.instance_finished("i2", "fulfil", "failed")
    m.instance_parked("i3", "ship", "nondeterminism")
    for duration in (0.0001, 0.004, 0.3, 2.0, 99.0, 0.005, 0.25):
        m.step_finished("charge", 1, "i1", True, duration)
    m.step_finished("charge", 2, "i1", False, 0.02)
    m.step_finished("auditor", 3, None, False, 10.0)
    m.task_published("email", 1, "i1", "default")
    m.task_published("email", 2, "i1", "default")
    m.task_published("pdf", 1, "i2", "slow")
    m.task_finished("email", 1, "i1", "failed")
    m.task_finished("pdf", 1, "i2", "completed")
    m.task_finished("gone", 1, "i9", "timed out")  # published before a restart
    m.task_result_dropped("a1", "stale")
    m.commit_finished(0, 0, 0.0)
    m.commit_finished(12, 3, 0.012)
    m.commit_finished(5000, 1000, 1.5)
    m.commit_finished(9999, 2, 12.0)
    m.dead_letter("d1", "decode", "bad")
    m.dead_letter("d2", "handler:auditor", "x")
    m.dead_letter("d3", "decode", "bad")
    m.timer_fired("i1", -1.0)
    m.timer_fired("i1", 0.07)
    m.timer_fired("i2", 3.0)
    m.tasks_open("default", 2)
    m.tasks_open("slow", 1)
    m.tasks_open("default", 0)
    m.instance_loaded("i1", "fulfil", None)
    m.instance_loaded("i1", "fulfil", None)
    m.instance_loaded("i2", "fulfil", 14)
    m.instance_loaded("i4", "ship", 0)


_CREATED = re.compile(r"^(\w+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)
_TASK_TIME = re.compile(
    r"^(overture_task_attempt_duration_seconds_(?:bucket|sum)\{[^}]*\}) \S+$", re.MULTILINE
)


def normalised(text: str) -> str:
    """Creation stamps and the task durations (wall-clock) replaced by ``X``."""
    return _TASK_TIME.sub(r"\1 X", _CREATED.sub(r"\1 X", text))


def test_the_exposition_is_the_one_prometheus_client_metrics_gave() -> None:
    metrics = MetricsObserver()
    drive(metrics)
    assert normalised(exposition(metrics.registry).decode()) == GOLDEN.read_text()


def test_a_fresh_observer_exposes_the_unlabelled_series_at_zero() -> None:
    text = exposition(MetricsObserver().registry).decode()
    assert "overture_task_results_dropped_total 0.0" in text
    assert "overture_commit_duration_seconds_count 0.0" in text
    assert 'overture_timer_lateness_seconds_bucket{le="+Inf"} 0.0' in text
    assert "overture_instances_started_total{" not in text  # labelled: none until counted


def test_a_task_attempt_is_timed_from_its_publication() -> None:
    metrics = MetricsObserver()
    metrics.task_published("email", 1, "i1", "default")
    metrics.task_finished("email", 1, "i1", "completed")
    text = exposition(metrics.registry).decode()
    assert (
        'overture_task_attempt_duration_seconds_bucket{le="0.005",outcome="completed",'
        'task="email"} 1.0' in text
    )


def test_scrapes_while_the_engine_counts_are_consistent() -> None:
    """A scrape from another thread (``--metrics``) while hooks run: every scrape parses,
    each histogram's +Inf bucket equals its count, and counters never go down."""
    metrics = MetricsObserver()
    stop = threading.Event()

    def count() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            metrics.instance_started(f"i{n}", f"p{n % 50}")  # new children as it goes
            metrics.step_finished(f"s{n % 30}", 1 + n % 2, "i", n % 3 > 0, (n % 100) / 10)

    worker = threading.Thread(target=count)
    worker.start()
    try:
        last = 0.0
        for _ in range(30):
            text = generate_latest(metrics.registry).decode()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("overture_instances_started_total{")
            )
            assert total >= last
            last = total
            counts = dict(
                re.findall(
                    r"^overture_step_attempt_duration_seconds_count(\{.*\}) (\S+)$", text, re.M
                )
            )
            infs = re.findall(
                r'^overture_step_attempt_duration_seconds_bucket\{le="\+Inf",(.*)\} (\S+)$',
                text,
                re.M,
            )
            for labels, value in infs:
                assert counts["{" + labels + "}"] == value
    finally:
        stop.set()
        worker.join()
    assert last > 0
