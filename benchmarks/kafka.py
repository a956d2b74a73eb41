"""``python -m benchmarks.kafka``: W1 and W2 on the Kafka backend, with 1..k engine processes.

Each measurement (workload x partitions x processes x repeat) uses a fresh namespace on a
real single-node broker (``overture.devkafka``, state in ``.overture/bench-kafka``; started
here unless it already runs, and stopped at the end only if started here), and k real
``overture run benchmarks.kafka_apps:wN`` engine processes. Completions are observed by
tailing the namespace's changelog topic with a ``read_committed`` consumer, so an instance
counts as completed once the engine's transaction that made it final has committed.

    .venv/bin/python -m benchmarks.kafka          # W1+W2 x 1,2 processes x 4 partitions x 3
    .venv/bin/python -m benchmarks.kafka --workloads w1 --partitions 2,4,8 --repeat 2
    .venv/bin/python -m benchmarks.kafka --quick  # smoke run: N=300, 1 repeat

Engine logs go to ``--logs`` (default ``benchmarks/results/kafka-logs/<time>/``, git-ignored).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import (
    TaskID,
)
from rich.table import Table

import overture as ov
from overture.devkafka import KAFKA_VERSION, start_broker, stop_broker
from overture.events import Envelope

from . import report, stats
from .workloads import OrderPlaced, PaymentReceived

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("w1", "w2")
TITLES = {"w1": "W1 order process", "w2": "W2 wait for event"}
UNITS = {"w1": "inst/s", "w2": "events/s"}
STOP_GRACE = 30.0  # seconds an engine gets to exit after SIGTERM before SIGKILL

NOTES = [
    "Each measurement: a fresh namespace (its 3 topics created before the engines start), "
    "k `overture run benchmarks.kafka_apps:wN --log-level WARNING` processes, the consumer "
    "group stable with k members, a warm-up, the load run, then the 1x1 run.",
    "Completed = the instance row with status completed read from <ns>.changelog by a "
    "read_committed consumer in the measuring process (so after the engine's transaction "
    "committed); the time is time.time() when that consumer returned the record.",
    "Throughput W1: N / (first send_many call -> last completion seen). W2: all N instances "
    "seen waiting first, then N payments; N / (first payment send -> last completion seen).",
    "Latency (load): time.time() just before the send_many carrying the trigger (W1) or the "
    "payment (W2) -> completion seen; open loop, so it includes queueing. 1x1: one event "
    "at a time, waiting for its completion. 'row' variants use the changelog record's "
    "CreateTime instead (stamped by the engine before its commit).",
    "CPU (eng|brk|me): core-seconds per 1,000 instances during the load run (send to last "
    "completion), of all engine processes, of the broker JVM, and of this process "
    "(producer + changelog tail). Broker, engines and producer share the machine's cores. "
    "'other cores': the average number of cores busy outside those processes meanwhile "
    "(/proc/stat), i.e. other jobs on the machine.",
]


class MeasurementError(Exception):
    """A measurement failed (timeout, engine died); the repeat counts as failed."""


# -- the changelog tail ----------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """When an instance reached a status: the record's CreateTime (``row``, set by the
    engine before its commit) and when this process received it (``seen``)."""

    row: float
    seen: float


class ChangelogTail(threading.Thread):
    """Follows every partition of ``<ns>.changelog`` from offset 0 (``read_committed``) and
    records, per trigger id, when its instance was first seen waiting and completed."""

    POLL = 0.1  # seconds per poll() when nothing arrives

    def __init__(self, bootstrap: str, namespace: str, partitions: int) -> None:
        super().__init__(name="changelog-tail", daemon=True)
        self.topic = f"{namespace}.changelog"
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{namespace}.bench-tail",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,
                "enable.partition.eof": False,
            }
        )
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in range(partitions)])
        self.cond = threading.Condition()
        self.completed: dict[str, Seen] = {}
        self.waiting: dict[str, Seen] = {}
        self.other: dict[str, str] = {}  # trigger id -> failed/cancelled/stuck
        self.records = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                # consume(n, timeout) blocks until n records or the timeout; poll() returns
                # with the first record, then take whatever else is already fetched
                first = self.consumer.poll(self.POLL)
                if first is None:
                    continue
                messages = [first, *self.consumer.consume(num_messages=1000, timeout=0)]
                now = time.time()
                news = False
                for msg in messages:
                    if msg.error() is not None:
                        continue
                    self.records += 1
                    key = msg.key()
                    value = msg.value()
                    if not key or not value or not key.startswith(b'["i"'):
                        continue
                    row = orjson.loads(value)
                    status, trigger = row[4], row[8]
                    written = msg.timestamp()[1] / 1000
                    if status == "completed":
                        if trigger not in self.completed:
                            self.completed[trigger] = Seen(written, now)
                            news = True
                    elif status == "waiting":
                        if trigger not in self.waiting:
                            self.waiting[trigger] = Seen(written, now)
                            news = True
                    elif status != "running":
                        self.other[trigger] = status
                        news = True
                if news:
                    with self.cond:
                        self.cond.notify_all()
        except Exception as exc:  # reported by wait()
            self.error = f"{type(exc).__name__}: {exc}"
            with self.cond:
                self.cond.notify_all()
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def wait(
        self, pred: Callable[[], bool], timeout: float, check: Callable[[], None], what: str
    ) -> None:
        """Block until ``pred()``; ``check()`` (engines alive) runs at least every 0.5 s.

        Raises:
            MeasurementError: not within ``timeout`` s, the tail failed, or ``check`` raised.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.error is not None:
                    raise MeasurementError(f"changelog tail failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MeasurementError(f"timed out after {timeout:g} s waiting for {what}")
                self.cond.wait(min(left, 0.5))
                check()


def all_in(ids: Iterable[str], seen: dict[str, Seen]) -> Callable[[], bool]:
    """A predicate: every id is in ``seen`` (checks only those still missing)."""
    remaining = list(ids)

    def pred() -> bool:
        nonlocal remaining
        remaining = [i for i in remaining if i not in seen]
        return not remaining

    pred.remaining = lambda: len(remaining)  # type: ignore[attr-defined]
    return pred


# -- engine processes ------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``); NaN if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def spawn(cmd: list[str], env: dict[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    """A benchmarked process, run from the repository root, its output to ``out``; in its
    own session, so a Ctrl-C in the terminal reaches only us (we stop it by pid)."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, Linux ``/proc/stat``:
    user, nice, system, irq, softirq, steal); NaN if unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuMark:
    engines: float
    broker: float
    client: float
    machine: float
    wall: float


@dataclass
class Engines:
    """k ``overture run`` processes of one measurement, each logging to its own file."""

    workload: str
    url: str
    logs: list[Path]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        for path in self.logs:
            with open(path, "ab") as out:
                cmd = [
                    sys.executable,
                    "-m",
                    "overture.cli",
                    "run",
                    f"benchmarks.kafka_apps:{self.workload}",
                    "--backend",
                    self.url,
                    "--log-level",
                    "WARNING",
                ]
                self.procs.append(spawn(cmd, env, out))

    def check(self) -> None:
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                raise MeasurementError(
                    f"engine {i} (pid {proc.pid}) exited with {code}:\n{tail(self.logs[i])}"
                )

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM every engine, SIGKILL any still running after ``STOP_GRACE`` s."""
        began = time.monotonic()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        out = []
        for proc in self.procs:
            killed = False
            try:
                proc.wait(max(0.1, STOP_GRACE - (time.monotonic() - began)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                killed = True
            out.append(
                {
                    "pid": proc.pid,
                    "code": proc.returncode,
                    "killed": killed,
                    "seconds": round(time.monotonic() - began, 2),
                }
            )
        return out


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


BANNER = re.compile(r"^overture: engine for app .* running; Ctrl-C to stop$")


def log_findings(paths: Sequence[Path]) -> list[str]:
    """Lines of the engine logs worth a look: at ``--log-level WARNING`` everything but
    the start banner (warnings, errors, tracebacks)."""
    found = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        found += [
            f"{path.name}: {line}"
            for line in text.splitlines()
            if line.strip() and not BANNER.match(line)
        ]
    return found


def group_ready(admin: AdminClient, group: str, members: int, partitions: int) -> bool:
    """The engine group is stable with ``members`` members that hold every partition of
    the events and internal topics."""
    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except KafkaException:
        return False
    if description.state != ConsumerGroupState.STABLE or len(description.members) != members:
        return False
    held = sum(
        len(m.assignment.topic_partitions) for m in description.members if m.assignment is not None
    )
    return held == 2 * partitions


# -- one measurement -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    workload: str
    partitions: int
    processes: int
    repeat: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.workload, self.partitions, self.processes)

    @property
    def name(self) -> str:
        return f"{self.workload} {self.processes}proc x {self.partitions}part"


class Measurement:
    """Runs one :class:`Step` end to end; ``phase`` is shown on the progress bar."""

    def __init__(
        self,
        step: Step,
        args: argparse.Namespace,
        bootstrap: str,
        broker_pid: int | None,
        logdir: Path,
        say: Callable[[str], None],
    ) -> None:
        self.step = step
        self.args = args
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid
        self.say = say
        self.namespace = f"bench{uuid.uuid4().hex[:12]}"
        self.url = f"kafka://{bootstrap}/{self.namespace}?partitions={step.partitions}"
        tag = f"{step.workload}-{step.processes}p{step.partitions}-r{step.repeat}"
        self.logs = [logdir / f"{tag}-engine{i}.log" for i in range(step.processes)]
        self.engines = Engines(step.workload, self.url, self.logs)
        self.seq = itertools.count()

    # -- helpers --------------------------------------------------------------------------------

    def orders(self, client: ov.Client, count: int, prefix: str) -> list[Envelope]:
        return [
            client.envelope(
                OrderPlaced(order_id=f"{prefix}-{next(self.seq)}", item="widget", quantity=1)
            )
            for _ in range(count)
        ]

    def send(self, client: ov.Client, envelopes: Sequence[Envelope]) -> dict[str, float]:
        """Send in ``--chunk`` chunks; the send time of each envelope id."""
        sent: dict[str, float] = {}
        chunk = self.args.chunk
        for i in range(0, len(envelopes), chunk):
            part = envelopes[i : i + chunk]
            now = time.time()
            client.send_many(part)
            for e in part:
                sent[e.id] = now
        return sent

    def wait(self, tailer: ChangelogTail, ids: Collection[str], seen: dict[str, Seen], what: str,
             timeout: float) -> None:  # fmt: skip
        pred = all_in(ids, seen)
        try:
            tailer.wait(pred, timeout, self.engines.check, what)
        except MeasurementError as exc:
            missing = pred.remaining()  # type: ignore[attr-defined]
            raise MeasurementError(f"{exc} ({missing} of {len(ids)} missing)") from None

    def think(self) -> None:
        if self.args.think > 0:
            time.sleep(random.uniform(0, self.args.think) / 1000)

    def payments(
        self, client: ov.Client, orders: Sequence[Envelope]
    ) -> tuple[list[Envelope], dict[str, str]]:
        """A payment per order, and payment id -> the order's (trigger) id."""
        out, trigger = [], {}
        for order in orders:
            assert order.partitionkey is not None  # the order id (OrderPlaced's key)
            payment = client.envelope(PaymentReceived(order_id=order.partitionkey, amount=42))
            out.append(payment)
            trigger[payment.id] = order.id
        return out, trigger

    # -- phases --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        step, args = self.step, self.args
        result: dict[str, Any] = {
            "namespace": self.namespace,
            "loadavg_start": os.getloadavg()[0],
        }
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        client = ov.Client(self.url)  # creates the namespace's topics
        tailer = ChangelogTail(self.bootstrap, self.namespace, step.partitions)
        tailer.start()
        try:
            began = time.monotonic()
            self.say("starting engines")
            self.engines.start()
            deadline = time.monotonic() + args.start_timeout
            while not group_ready(
                admin, f"{self.namespace}.engine", step.processes, step.partitions
            ):
                self.engines.check()
                if time.monotonic() > deadline:
                    raise MeasurementError(
                        f"the engine group did not settle with {step.processes} member(s) "
                        f"in {args.start_timeout:g} s"
                    )
                time.sleep(0.2)
            result["group_ready_s"] = round(time.monotonic() - began, 2)
            self.say("warm-up")
            self.warmup(client, tailer)
            result["ready_s"] = round(time.monotonic() - began, 2)
            self.say(f"load, N={args.n}")
            if step.workload == "w1":
                result.update(self.w1_load(client, tailer))
            else:
                result.update(self.w2_load(client, tailer))
            if args.iterations > 0:
                self.say(f"1x1, {args.iterations} iterations")
                if step.workload == "w1":
                    result.update(self.w1_serial(client, tailer))
                else:
                    result.update(self.w2_serial(client, tailer))
            result["other_statuses"] = len(tailer.other)
            if tailer.other:
                result["other_example"] = next(iter(tailer.other.items()))
        finally:
            self.say("stopping engines")
            result["engines_stop"] = self.engines.stop()
            tailer.stop()
            client.close()
            self.cleanup(admin)
        result["log_lines"] = log_findings(self.logs)[:50]
        result["log_line_count"] = len(log_findings(self.logs))
        bad = [s for s in result["engines_stop"] if s["code"] != 0 or s["killed"]]
        if bad:
            result["engine_exit_problem"] = bad
        return result

    def cleanup(self, admin: AdminClient) -> None:
        """Delete the namespace's topics, so the broker does not pile up partitions."""
        topics = [f"{self.namespace}.{t}" for t in ("events", "internal", "changelog")]
        try:
            for future in admin.delete_topics(topics, request_timeout=15).values():
                future.result(20)
        except KafkaException:
            pass

    def warmup(self, client: ov.Client, tailer: ChangelogTail) -> None:
        count = self.args.warmup
        # at least one instance per partition, so every partition's engine is exercised
        orders = self.orders(client, max(count, 4 * self.step.partitions), "warm")
        self.send(client, orders)
        ids = [o.id for o in orders]
        timeout = self.args.start_timeout
        if self.step.workload == "w2":
            self.wait(tailer, ids, tailer.waiting, "warm-up instances waiting", timeout)
            payments, _ = self.payments(client, orders)
            self.send(client, payments)
        self.wait(tailer, ids, tailer.completed, "warm-up completions", timeout)

    def cpu_mark(self) -> CpuMark:
        broker = proc_cpu(self.broker_pid) if self.broker_pid else float("nan")
        return CpuMark(self.engines.cpu(), broker, self_cpu(), machine_busy(), time.monotonic())

    def cpu_used(self, mark: CpuMark, n: int) -> dict[str, float]:
        """CPU seconds per 1,000 instances since ``mark``, and what the rest of the
        machine used meanwhile (average cores busy outside engines, broker and us)."""
        now = self.cpu_mark()
        per_k = 1000 / n
        engines, broker = now.engines - mark.engines, now.broker - mark.broker
        client, busy = now.client - mark.client, now.machine - mark.machine
        wall = now.wall - mark.wall
        return {
            "cpu_engines_per_1k": engines * per_k,
            "cpu_broker_per_1k": broker * per_k,
            "cpu_client_per_1k": client * per_k,
            "machine_busy_cores": busy / wall,
            "other_busy_cores": (busy - engines - broker - client) / wall,
        }

    def w1_load(self, client: ov.Client, tailer: ChangelogTail) -> dict[str, Any]:
        n = self.args.n
        orders = self.orders(client, n, "load")
        ids = [o.id for o in orders]
        mark = self.cpu_mark()
        t0 = time.time()
        sent = self.send(client, orders)
        t_sent = time.time()
        self.wait(tailer, ids, tailer.completed, "load completions", self.args.timeout)
        done = [tailer.completed[i] for i in ids]
        end = max(s.seen for s in done)
        out: dict[str, Any] = {
            "throughput": n / (end - t0),
            "send_rate": n / (t_sent - t0),
            "seconds": end - t0,
            **latencies("load", [s.seen - sent[i] for i, s in zip(ids, done, strict=True)]),
            **latencies("load_row", [s.row - sent[i] for i, s in zip(ids, done, strict=True)]),
            **self.cpu_used(mark, n),
        }
        return out

    def w2_load(self, client: ov.Client, tailer: ChangelogTail) -> dict[str, Any]:
        n = self.args.n
        orders = self.orders(client, n, "load")
        ids = [o.id for o in orders]
        t0 = time.time()
        self.send(client, orders)
        self.wait(tailer, ids, tailer.waiting, "load instances waiting", self.args.timeout)
        started = max(tailer.waiting[i].seen for i in ids)
        payments, trigger = self.payments(client, orders)
        mark = self.cpu_mark()
        p0 = time.time()
        sent = self.send(client, payments)
        t_sent = time.time()
        self.wait(tailer, ids, tailer.completed, "load completions", self.args.timeout)
        by_trigger = {trigger[pid]: t for pid, t in sent.items()}
        done = [tailer.completed[i] for i in ids]
        end = max(s.seen for s in done)
        return {
            "throughput": n / (end - p0),
            "start_rate": n / (started - t0),
            "send_rate": n / (t_sent - p0),
            "seconds": end - p0,
            **latencies("load", [s.seen - by_trigger[i] for i, s in zip(ids, done, strict=True)]),
            **latencies(
                "load_row", [s.row - by_trigger[i] for i, s in zip(ids, done, strict=True)]
            ),
            **self.cpu_used(mark, n),
        }

    def w1_serial(self, client: ov.Client, tailer: ChangelogTail) -> dict[str, Any]:
        seen, rows = [], []
        for _ in range(self.args.iterations):
            (order,) = self.orders(client, 1, "one")
            self.think()
            t = time.time()
            client.send_many([order])
            self.wait(tailer, [order.id], tailer.completed, "a 1x1 completion", 30.0)
            done = tailer.completed[order.id]
            seen.append(done.seen - t)
            rows.append(done.row - t)
        return {**latencies("serial", seen), **latencies("serial_row", rows)}

    def w2_serial(self, client: ov.Client, tailer: ChangelogTail) -> dict[str, Any]:
        orders = self.orders(client, self.args.iterations, "one")
        self.send(client, orders)
        ids = [o.id for o in orders]
        self.wait(tailer, ids, tailer.waiting, "1x1 instances waiting", self.args.timeout)
        payments, trigger = self.payments(client, orders)
        seen, rows = [], []
        for payment in payments:
            self.think()
            t = time.time()
            client.send_many([payment])
            order_id = trigger[payment.id]
            self.wait(tailer, [order_id], tailer.completed, "a 1x1 completion", 30.0)
            done = tailer.completed[order_id]
            seen.append(done.seen - t)
            rows.append(done.row - t)
        return {**latencies("serial", seen), **latencies("serial_row", rows)}


def latencies(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": stats.ms(stats.percentile(seconds, 50)),
        f"{prefix}_p99_ms": stats.ms(stats.percentile(seconds, 99)),
        f"{prefix}_max_ms": stats.ms(max(seconds)),
    }


# -- aggregation and reporting ---------------------------------------------------------------


@dataclass(slots=True)
class Unit:
    step: Step  # repeat 1's
    n: int
    repeats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.repeats if "error" not in r]

    def median(self, metric: str) -> float:
        return stats.median([r[metric] for r in self.ok if isinstance(r.get(metric), int | float)])

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.ok if isinstance(r.get(metric), int | float)]

    def medians(self) -> dict[str, float]:
        keys = {k for r in self.ok for k, v in r.items() if isinstance(v, int | float)}
        return {k: self.median(k) for k in sorted(keys)}

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.step.workload,
            "partitions": self.step.partitions,
            "processes": self.step.processes,
            "n": self.n,
            "median": self.medians(),
            "repeats": self.repeats,
        }


def _f(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    mid = stats.median(values)
    return f" ±{(max(values) - min(values)) / 2 / mid:.0%}" if mid else ""


def results_table(units: Sequence[Unit], args: argparse.Namespace, cores: int | None) -> Table:
    table = Table(
        title=f"Overture on Kafka (single broker, same machine, {cores} cores): "
        f"medians of {args.repeat} repeat(s)",
        title_justify="left",
    )
    for col in ("workload", "proc", "part", "N"):
        table.add_column(col, justify="right" if col in ("proc", "part", "N") else "left")
    for col in (
        "throughput",
        "load p50 ms",
        "load p99 ms",
        "1x1 p50 ms",
        "1x1 p99 ms",
        "1x1 row p50",
        "CPU s/1k eng|brk|me",
        "other cores",
        "ok",
        "log lines",
    ):
        table.add_column(col, justify="right", no_wrap=True)
    for u in units:
        m = u.medians()
        tp = m.get("throughput", float("nan"))
        table.add_row(
            u.step.workload.upper(),
            str(u.step.processes),
            str(u.step.partitions),
            f"{u.n:,}",
            f"{_f(tp)} {UNITS[u.step.workload]}{_spread(u.values('throughput'))}",
            _f(m.get("load_p50_ms", float("nan")), 1),
            _f(m.get("load_p99_ms", float("nan")), 1),
            _f(m.get("serial_p50_ms", float("nan")), 1),
            _f(m.get("serial_p99_ms", float("nan")), 1),
            _f(m.get("serial_row_p50_ms", float("nan")), 1),
            "|".join(
                _f(m.get(k, float("nan")), 2)
                for k in ("cpu_engines_per_1k", "cpu_broker_per_1k", "cpu_client_per_1k")
            ),
            _f(m.get("other_busy_cores", float("nan")), 2),
            f"{len(u.ok)}/{len(u.repeats)}",
            str(sum(int(r.get("log_line_count", 0)) for r in u.repeats)),
        )
    return table


def scaling_tables(units: Sequence[Unit]) -> list[Table]:
    """Per workload: median throughput, partitions down, processes across."""
    out = []
    for workload in WORKLOADS:
        mine = [u for u in units if u.step.workload == workload]
        parts = sorted({u.step.partitions for u in mine})
        procs = sorted({u.step.processes for u in mine})
        if len(parts) * len(procs) < 2:
            continue
        table = Table(
            title=f"{TITLES[workload]}: throughput ({UNITS[workload]}) by partitions x processes",
            title_justify="left",
        )
        table.add_column("partitions", justify="right")
        for k in procs:
            table.add_column(f"{k} process{'es' if k > 1 else ''}", justify="right")
        for p in parts:
            cells = []
            for k in procs:
                unit = next((u for u in mine if u.step.key == (workload, p, k)), None)
                cells.append("-" if unit is None else _f(unit.median("throughput")))
            table.add_row(str(p), *cells)
        out.append(table)
    return out


# -- command line ----------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _workloads(text: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in items if v not in WORKLOADS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(WORKLOADS)}")
    return items


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.kafka",
        description="W1 and W2 on the Kafka backend with real engine processes.",
    )
    p.add_argument("--workloads", type=_workloads, default=list(WORKLOADS), help="w1,w2")
    p.add_argument("--processes", type=_ints, default=[1, 2], help="engine processes (1,2)")
    p.add_argument("--partitions", type=_ints, default=[4], help="partitions, e.g. 2,4,8 (4)")
    p.add_argument("-n", type=int, default=None, help="instances per load run (2000)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per configuration (3)")
    p.add_argument("--iterations", type=int, default=None, help="1x1 rounds; 0 skips (100)")
    p.add_argument("--warmup", type=int, default=50, help="untimed instances first (50)")
    p.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="1x1: a random pause, uniform in [0, THINK] ms, before each send (0)",
    )
    p.add_argument("--chunk", type=int, default=100, help="events per send_many call (100)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per load phase (120)")
    p.add_argument(
        "--start-timeout", type=float, default=90.0, help="seconds for group + warm-up (90)"
    )
    p.add_argument("--bootstrap", default=None, help="use this running broker (host:port)")
    p.add_argument("--state-dir", default=".overture/bench-kafka", help="dev broker state dir")
    p.add_argument("--keep-broker", action="store_true", help="leave a broker we started running")
    p.add_argument("--logs", default=None, help="engine logs directory")
    p.add_argument("--json", default=None, help="write every repeat's metrics to this file")
    p.add_argument("--quick", action="store_true", help="N=300, 20 iterations, 1 repeat")
    args = p.parse_args(argv)
    args.n = args.n or (300 if args.quick else 2000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.iterations is None:
        args.iterations = 20 if args.quick else 100
    return args


def plan(args: argparse.Namespace) -> list[Step]:
    """Repeats interleaved, so drift (and other load on the machine) hits every
    configuration alike."""
    return [
        Step(w, p, k, r)
        for r in range(1, args.repeat + 1)
        for p in args.partitions
        for k in args.processes
        for w in args.workloads
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP: stop the engines and the broker as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    logdir = Path(
        args.logs or ROOT / "benchmarks/results/kafka-logs" / time.strftime("%Y%m%d-%H%M%S")
    )
    logdir.mkdir(parents=True, exist_ok=True)
    steps = plan(args)
    units: dict[tuple[str, int, int], Unit] = {}
    started = False
    state_dir = (ROOT / args.state_dir).resolve()
    broker_pid: int | None = None
    meta: dict[str, Any] = {"machine": report.machine(), "kafka": KAFKA_VERSION}
    meta["machine"]["loadavg_at_start"] = os.getloadavg()
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            console.print(f"starting the dev broker in {state_dir} (if not running)...")
            broker = start_broker(state_dir, timeout=180, progress=console.print)
            bootstrap, started, broker_pid = broker.bootstrap, broker.started, broker.record.pid
            how = "started" if started else "already running"
            console.print(f"broker {bootstrap} (pid {broker_pid}, {how})")
        meta["broker"] = {"bootstrap": bootstrap, "pid": broker_pid, "started_here": started}
        with report.progress_bar(console) as progress:
            task: TaskID = progress.add_task("starting", total=len(steps))
            for step in steps:
                unit = units.setdefault(step.key, Unit(step, args.n))
                label = f"{step.name} (repeat {step.repeat})"

                def say(phase: str, label: str = label) -> None:
                    progress.update(task, description=f"{label}: {phase}")

                began = time.monotonic()
                try:
                    m = Measurement(step, args, bootstrap, broker_pid, logdir, say)
                    result = m.run()
                except MeasurementError as exc:
                    result = {"error": str(exc)}
                except Exception as exc:  # one failed measurement must not end the run
                    result = {
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    }
                result["wall_s"] = round(time.monotonic() - began, 1)
                unit.repeats.append(result)
                if "error" in result:
                    console.print(f"[red]{label} failed:[/] {result['error']}")
                elif result.get("log_line_count"):
                    console.print(
                        f"[yellow]{label}: {result['log_line_count']} engine log line(s)[/], "
                        f"e.g. {result['log_lines'][0]}",
                        markup=True,
                        highlight=False,
                    )
                progress.advance(task)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
    finally:
        if started and not args.keep_broker:
            console.print("stopping the broker we started...")
            stop_broker(state_dir)
    ordered = list(units.values())
    cores = os.cpu_count()
    console.print(results_table(ordered, args, cores))
    for table in scaling_tables(ordered):
        console.print(table)
    m = meta["machine"]
    console.print(
        f"machine: {cores} cores, {m['processor']}, {m['platform']}, Python {m['python']}, "
        f"Overture {m['overture']} ({m['revision']}), Kafka {KAFKA_VERSION}; load average at "
        f"start {m['loadavg_at_start'][0]:.2f}; engine logs in {logdir}",
        style="dim",
    )
    for note in NOTES:
        console.print(note, style="dim")
    if args.json:
        doc = {
            **meta,
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "results": [u.as_json() for u in ordered],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        console.print(f"results written to {args.json}")
    failed = sum(len(u.repeats) - len(u.ok) for u in ordered)
    return 1 if failed or len(ordered) == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
