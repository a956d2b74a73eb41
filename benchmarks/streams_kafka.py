"""Streams on Kafka, Overture beside Quix Streams: count per key in 10-second tumbling
windows, the same job on the same local broker in the same run.

Two measurements per system and repeat, each on fresh topics of ``--partitions``
partitions, each system ``--processes`` members of its consumer group (1 by default;
``overture run benchmarks.streams_kafka:app``; Quix Streams'
``benchmarks/peers/quix_streams.py`` in ``.venv-peers``, RocksDB state, a state
directory per member):

- **throughput**: ``--events`` events over ``--keys`` keys produced to the input topic
  first (keys in turn, event times advancing ``--per-window`` events per 10 s: 100,000 by
  default, so with 10,000 keys each key has 10 events per window and windows keep
  closing as the stream goes on); then the system starts and drains it.
  events/s = the events between the first and the last window result seen / that time
  (start-up excluded, alike for both). CPU: the system's process, core-seconds per
  100,000 events.
- **latency** (paced producer): ``--rate`` events/s for ``--seconds`` with event time =
  the wall clock at production; a window's result closes at the first event past its end,
  so latency = result seen by a ``read_committed`` consumer - window end (the closing
  event's production time, to within 1/rate). Memory: RSS of the system's process with
  its ``--keys`` windows open minus its RSS before the first event, per open window.

Overture reads CloudEvents (binary mode, ``time_field="at"``) from ``<ns>.events`` and
emits each result as a ``counted`` event there; Quix reads JSON values whose record
timestamp is the event time and writes ``{"start", "end", "value"}`` to an output topic.
Both close windows on event time only (Overture: ``idle=None``, grace 0; Quix: grace 0)
and both run exactly once (Overture: Kafka transactions, always; Quix:
``processing_guarantee="exactly-once"``, its default ``commit_interval`` of 5 s).

    bash benchmarks/peers/setup.sh quix          # .venv-peers with quixstreams
    .venv/bin/python -m benchmarks.streams_kafka        # 1M events, 3 repeats (~20 min)
    .venv/bin/python -m benchmarks.streams_kafka --events 100000 --repeat 1 --systems overture

The broker is ``overture.devkafka``'s (state in ``.overture/bench-kafka``), started unless
it runs, stopped at the end only if started here. Results: a table, and JSON in
``benchmarks/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import overture as ov
from overture import protocol
from overture.binding import to_binary
from overture.codec import Codec
from overture.devkafka import start_broker, stop_broker
from overture.ports import partition_for

from .kafka import proc_cpu, spawn

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
QUIX = ROOT / "benchmarks" / "peers" / "quix_streams.py"
WINDOW = 10.0
SYSTEMS = ("overture", "quix")
POLL_S = 0.1
"""How long the results' follower waits in one poll: the resolution of its clock."""

app = ov.App("bench_streams_kafka")


@app.window(
    source="view",
    key="user",
    window=ov.Tumbling(timedelta(seconds=WINDOW)),
    aggregate={"n": ov.Count()},
    time_field="at",
    idle=None,
)
def counts(result: ov.WindowResult) -> ov.Event:
    return ov.Event.of(
        "counted",
        {"user": result.key, "n": result.values["n"], "end": result.end.timestamp()},
        key=result.key,
    )


# -- topics, producing ------------------------------------------------------------------


@dataclass
class Topics:
    """One measurement's topics: what is produced to, what results are read from."""

    system: str
    bootstrap: str
    partitions: int
    name: str = field(default_factory=lambda: f"sk{uuid.uuid4().hex[:10]}")

    @property
    def input(self) -> str:
        return protocol.events_topic(self.name) if self.system == "overture" else f"{self.name}.in"

    @property
    def output(self) -> str:
        return self.input if self.system == "overture" else f"{self.name}.out"

    @property
    def group(self) -> str:
        return protocol.engine_group(self.name) if self.system == "overture" else self.name

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}/{self.name}?partitions={self.partitions}"

    def create(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        if self.system == "overture":
            topics = [
                NewTopic(protocol.events_topic(self.name), self.partitions, 1),
                NewTopic(protocol.internal_topic(self.name), self.partitions, 1),
                NewTopic(
                    protocol.changelog_topic(self.name),
                    self.partitions,
                    1,
                    config={"cleanup.policy": "compact"},
                ),
            ]
        else:
            topics = [
                NewTopic(self.input, self.partitions, 1),
                NewTopic(self.output, self.partitions, 1),
            ]
        for future in admin.create_topics(topics).values():
            future.result()


class Records:
    """Builds one event's record for a system: Overture's CloudEvents binary mode (the
    headers of one event made by the codec, the id and key replaced per event), Quix's
    JSON value with the event time as the record timestamp."""

    def __init__(self, system: str, partitions: int) -> None:
        self.system = system
        self.partitions = partitions
        envelope = ov.Event.of("view", {"user": "u", "at": 0.0}, key="u").envelope
        _, headers, _ = to_binary(Codec().to_bytes(envelope))
        self._headers = [(k, v) for k, v in headers or [] if k not in ("ce_id", "ce_partitionkey")]
        self._run = uuid.uuid4().hex[:8]

    def produce(
        self,
        producer: Producer,
        topic: str,
        i: int,
        user: str,
        at: float,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        value = orjson.dumps({"user": user, "at": at})
        partition = partition_for(user, self.partitions)
        key = user.encode()
        while True:
            try:
                if self.system == "overture":
                    headers = [
                        *self._headers,
                        ("ce_id", f"{self._run}-{i}".encode()),
                        ("ce_partitionkey", key),
                    ]
                    producer.produce(
                        topic, value, key, partition=partition, headers=headers,
                        on_delivery=on_delivery,
                    )  # fmt: skip
                else:
                    producer.produce(
                        topic, value, key, partition=partition, timestamp=int(at * 1000),
                        on_delivery=on_delivery,
                    )  # fmt: skip
                return
            except BufferError:
                producer.poll(0.05)


def producer_for(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "none",
        }
    )


def prefill(topics: Topics, events: int, keys: int, per_window: int) -> None:
    """``events`` events, ``per_window`` per 10 s of event time, keys in turn; the times
    end a minute ago (brokers refuse record timestamps far in the future)."""
    records = Records(topics.system, topics.partitions)
    producer = producer_for(topics.bootstrap)
    step = WINDOW / per_window
    t0 = (time.time() - 60 - events * step) // WINDOW * WINDOW
    failed: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    for i in range(events):
        records.produce(producer, topics.input, i, f"u{i % keys}", t0 + i * step, delivered)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0 or failed:
        raise RuntimeError(f"the producer could not deliver every event: {failed[:3]}")


# -- the system under test ----------------------------------------------------------------


class System:
    """One system's processes (``processes`` members of its consumer group, each in its
    own session, stopped by its pid)."""

    def __init__(
        self,
        topics: Topics,
        log: Path,
        guarantee: str,
        commit_interval: float,
        batch: int | None,
        processes: int = 1,
    ) -> None:
        self.topics = topics
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.state = Path(tempfile.mkdtemp(prefix="quix-state-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        for member in range(processes):
            if topics.system == "overture":
                cmd = [
                    sys.executable, "-m", "overture.cli", "run", "benchmarks.streams_kafka:app",
                    "--backend", topics.url, "--log-level", "WARNING", "--no-tasks",
                    *(["--batch-size", str(batch)] if batch else []),
                ]  # fmt: skip
            else:
                if not PEER_PYTHON.exists():
                    raise SystemExit(
                        "no .venv-peers: run `bash benchmarks/peers/setup.sh quix` first"
                    )
                cmd = [
                    str(PEER_PYTHON), str(QUIX), "--bootstrap", topics.bootstrap,
                    "--input", topics.input, "--output", topics.output, "--group", topics.group,
                    "--state-dir", str(self.state / str(member)), "--guarantee", guarantee,
                    "--commit-interval", str(commit_interval),
                ]  # fmt: skip
            with log.open("ab") as out:
                self.procs.append(spawn(cmd, env, out))

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.topics.system} exited with {proc.returncode}:\n{tail}")

    def cpu(self) -> float:
        return sum(proc_cpu(proc.pid) for proc in self.procs)

    def rss(self, field_name: str = "VmRSS") -> float:
        """Bytes of the processes' resident memory, summed (``VmHWM``: each one's peak)."""
        total = 0.0
        for proc in self.procs:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        total += float(line.split()[1]) * 1024
                        break
                else:
                    return float("nan")
        return total

    def wait_stable(self, timeout: float = 90) -> None:
        """Until the system's consumer group is stable with its partitions assigned."""
        admin = AdminClient({"bootstrap.servers": self.topics.bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                group = self.topics.group
                description = admin.describe_consumer_groups([group], request_timeout=5)[
                    group
                ].result()
                assigned = sum(
                    len(m.assignment.topic_partitions)
                    for m in description.members
                    if m.assignment is not None
                )
                members = len(description.members)
                stable = description.state == ConsumerGroupState.STABLE
                if stable and assigned and members == len(self.procs):
                    return
            except KafkaException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.topics.system}: its group never became stable")

    def state_bytes(self) -> tuple[int, int]:
        """(entries, bytes) of the system's window state as stored: Overture's keyed
        state of ``counts`` in the changelog (its newest values), Quix's RocksDB
        directory (files on disk, its log and manifest included)."""
        if self.topics.system == "quix":
            files = [p for p in self.state.rglob("*") if p.is_file()]
            return 0, sum(p.stat().st_size for p in files)
        return changelog_state(self.topics)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.state, ignore_errors=True)


def changelog_state(topics: Topics) -> tuple[int, int]:
    """(entries, value bytes) of the ``counts`` window's keys in the changelog."""
    topic = protocol.changelog_topic(topics.name)
    consumer = Consumer(
        {
            "bootstrap.servers": topics.bootstrap,
            "group.id": f"{topics.name}.bench-state",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
        for p in range(topics.partitions)
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in range(topics.partitions)])
    prefix = b'["s","stream:counts","' + base64.b64encode(b"k:")[:2]
    latest: dict[bytes, int] = {}
    done: set[int] = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 60
    while len(done) < topics.partitions and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=10_000, timeout=0.5):
            if message.error() is not None:
                continue
            key, value = message.key() or b"", message.value()
            if key.startswith(prefix):
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = len(value)
            if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                done.add(message.partition() or 0)
    consumer.close()
    return len(latest), sum(latest.values())


# -- the results ------------------------------------------------------------------------


class Results(threading.Thread):
    """Follows the output topic with a ``read_committed`` consumer and records, for each
    window result, when it was seen and the window's end."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(name="results", daemon=True)
        self.topics = topics
        self.consumer = Consumer(
            {
                "bootstrap.servers": topics.bootstrap,
                "group.id": f"{topics.name}.bench",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,
            }
        )
        self.consumer.assign(
            [TopicPartition(topics.output, p, 0) for p in range(topics.partitions)]
        )
        self.seen: list[float] = []
        self.ends: list[float] = []
        self.counted = 0
        self._halt = threading.Event()

    def run(self) -> None:
        overture = self.topics.system == "overture"
        while not self._halt.is_set():
            batch = self.consumer.consume(num_messages=10_000, timeout=POLL_S)
            now = time.time()
            for message in batch:
                if message.error() is not None:
                    continue
                if overture:
                    headers = message.headers() or []
                    if b"counted" not in (v for k, v in headers if k == "ce_type"):
                        continue
                    data = orjson.loads(message.value())
                    end, n = float(data["end"]), int(data["n"])
                else:
                    data = orjson.loads(message.value())
                    end, n = data["end"] / 1000, int(data["value"])
                self.seen.append(now)
                self.ends.append(end)
                self.counted += n

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.consumer.close()


def wait_until(
    done: Callable[[], bool], results: Results, system: System, timeout: float, stall: float
) -> bool:
    """Until ``done()``; False once no result came for ``stall`` seconds, or at the
    timeout."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while not done():
        system.check()
        now = time.monotonic()
        if len(results.seen) != last:
            last, last_change = len(results.seen), now
        if now > deadline or now - last_change > stall:
            return False
        time.sleep(0.2)
    return True


# -- the measurements -------------------------------------------------------------------


@dataclass
class Throughput:
    system: str
    events: int
    results: int
    events_per_s: float
    cpu_per_100k: float
    peak_rss_mb: float


@dataclass
class Latency:
    system: str
    rate: int
    results: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    bytes_per_open_window: float
    """RSS with the windows open minus RSS before the first event, per open window."""
    stored_bytes_per_window: float
    """The window state as stored (changelog / RocksDB files), per open window."""


def start(topics: Topics, args: argparse.Namespace, log: Path) -> tuple[Results, System]:
    """The results' follower, then the system, on ``topics``."""
    results = Results(topics)
    results.start()
    return results, System(
        topics, log, args.quix_guarantee, args.quix_commit_interval, args.batch_size,
        args.processes,
    )  # fmt: skip


def throughput(
    system_name: str, args: argparse.Namespace, bootstrap: str, logs: Path
) -> Throughput:
    topics = Topics(system_name, bootstrap, args.partitions)
    topics.create()
    prefill(topics, args.events, args.keys, args.per_window)
    # every window but the last of each key closes: the windows' events less the last's
    windows = args.events // args.per_window
    expected = (windows - 1) * min(args.keys, args.per_window)
    results, system = start(topics, args, logs / f"{system_name}-throughput.log")
    try:
        cpu0 = system.cpu()
        complete = wait_until(lambda: len(results.seen) >= expected, results, system, 1800, 60)
        cpu = system.cpu() - cpu0
        peak = system.rss("VmHWM")
    finally:
        system.stop()
        results.stop()
    seen = results.seen
    if not complete:
        print(f"  {system_name}: only {len(seen):,} of {expected:,} window results", flush=True)
    # the first result comes once the first window's events are in; results are timed per
    # poll of the follower, so a drain that fits in one poll has a span of one poll (a lower
    # bound on events/s, reached only at tiny --events)
    span = max(seen[-1] - seen[0], POLL_S) if seen else float("nan")
    per_s = (args.events - args.per_window) / span if complete else float("nan")
    return Throughput(
        system_name, args.events, len(seen), per_s, cpu / args.events * 100_000, peak / 2**20
    )


def latency(system_name: str, args: argparse.Namespace, bootstrap: str, logs: Path) -> Latency:
    topics = Topics(system_name, bootstrap, args.partitions)
    topics.create()
    results, system = start(topics, args, logs / f"{system_name}-latency.log")
    try:
        system.wait_stable()
        time.sleep(2)
        base = system.rss()
        records = Records(system_name, args.partitions)
        producer = producer_for(bootstrap)
        began = time.time()
        total = int(args.rate * args.seconds)
        for i in range(total):
            due = began + i / args.rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            records.produce(producer, topics.input, i, f"u{i % args.keys}", time.time())
            producer.poll(0)
        producer.flush(60)
        open_rss = system.rss()
        entries, stored = system.state_bytes()
        # every window that the last events closed, seen
        closed = int((time.time() - began) // WINDOW)
        wait_until(lambda: len(results.seen) >= closed * min(args.keys, args.rate * WINDOW) * 0.99,
                   results, system, 60, 20)  # fmt: skip
    finally:
        system.stop()
        results.stop()
    lat = sorted(1000 * (s - e) for s, e in zip(results.seen, results.ends, strict=True))
    if not lat:
        lat = [float("nan")]
    return Latency(
        system_name,
        args.rate,
        len(results.seen),
        statistics.median(lat),
        lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        lat[-1],
        (open_rss - base) / args.keys,
        stored / (entries or args.keys),
    )


def median(values: list[float]) -> float:
    good = [v for v in values if v == v]
    return statistics.median(good) if good else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument(
        "--per-window", type=int, default=100_000, help="events per 10 s of event time"
    )
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--processes", type=int, default=1, help="members of each system's group (<= partitions)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2_000, help="paced producer, events/s")
    parser.add_argument("--seconds", type=float, default=40.0, help="paced producer's run")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--skip", default="", help="throughput and/or latency to leave out")
    parser.add_argument("--quix-guarantee", default="exactly-once")
    parser.add_argument(
        "--quix-commit-interval", type=float, default=5.0, help="seconds (Quix's default: 5)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="overture run's (default)")
    parser.add_argument("--state-dir", default=".overture/bench-kafka")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not 1 <= args.processes <= args.partitions:
        parser.error("--processes: from 1 to --partitions (a member without a partition idles)")
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"--systems: {s!r} is not one of {', '.join(SYSTEMS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = ROOT / "benchmarks" / "results" / f"streams-kafka-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    broker = start_broker(ROOT / args.state_dir, timeout=180, progress=print)
    out: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "throughput": [],
        "latency": [],
    }
    try:
        for r in range(args.repeat):
            for s in systems:
                if "throughput" not in args.skip:
                    t = throughput(s, args, broker.bootstrap, logs)
                    out["throughput"].append(asdict(t))
                    print(f"[{r + 1}] {s} throughput: {t.events_per_s:,.0f} events/s, "
                          f"CPU {t.cpu_per_100k:.1f} s/100k, peak RSS {t.peak_rss_mb:.0f} MB, "
                          f"{t.results:,} results", flush=True)  # fmt: skip
                if "latency" not in args.skip:
                    lat = latency(s, args, broker.bootstrap, logs)
                    out["latency"].append(asdict(lat))
                    print(f"[{r + 1}] {s} latency at {lat.rate:,}/s: p50 {lat.p50_ms:.0f} ms, "
                          f"p99 {lat.p99_ms:.0f} ms, max {lat.max_ms:.0f} ms, "
                          f"{lat.bytes_per_open_window:.0f} B RSS and "
                          f"{lat.stored_bytes_per_window:.0f} B stored per open window, "
                          f"{lat.results:,} results", flush=True)  # fmt: skip
    finally:
        if broker.started:
            stop_broker(ROOT / args.state_dir)
        (logs / "results.json").write_text(json.dumps(out, indent=2))
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nmedians of {args.repeat} (results: {logs / 'results.json'})")
    for s in systems:
        ts = [t for t in out["throughput"] if t["system"] == s]
        ls = [x for x in out["latency"] if x["system"] == s]
        if ts:
            print(f"{s:9} {median([t['events_per_s'] for t in ts]):>10,.0f} events/s  "
                  f"CPU {median([t['cpu_per_100k'] for t in ts]):.1f} s/100k events")  # fmt: skip
        if ls:
            memory = median([x["bytes_per_open_window"] for x in ls])
            print(f"{s:9} latency p50 {median([x['p50_ms'] for x in ls]):.0f} ms, "
                  f"p99 {median([x['p99_ms'] for x in ls]):.0f} ms, "
                  f"{memory:.0f} B per open window")  # fmt: skip


if __name__ == "__main__":
    main()
