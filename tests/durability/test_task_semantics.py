"""Remote task semantics end to end, with real processes on SQLite and on the real Kafka
broker: an engine (``overture run --no-tasks``), ``overture worker`` processes, and the
task ``t.effect`` of ``task_app.py`` recording every run in a file.

After each scenario: every instance completed with the output of its calls, every call
ran at least once under one idempotency key, and its instance applied exactly one result
per call (one ``res`` entry per call in its journal), whatever was killed or re-sent.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from overture import protocol
from overture.codec import Codec

from ..conftest import kafka_url
from ..tasks.test_worker_cli import Proc
from .task_app import EFFECTS_ENV, app, effects

APP = "tests.durability.task_app:app"
LEASE = "1"
"""The workers' lease on SQLite: a killed worker's attempt is re-delivered after it."""


@dataclasses.dataclass
class Run:
    """One scenario's backend, processes and effects file."""

    url: str
    tmp: Path
    env: dict[str, str]
    client: ov.Client
    procs: list[Proc] = dataclasses.field(default_factory=list)

    @property
    def kafka(self) -> bool:
        return self.url.startswith("kafka:")

    @property
    def effects_file(self) -> Path:
        return self.tmp / "effects.txt"

    def engine(self, name: str = "engine", cache_size: int = 10_000) -> Proc:
        args = ("run", APP, "--no-tasks", "--backend", self.url, "--cache-size", str(cache_size))
        return self._start(name, *args)

    def worker(self, name: str, *extra: str) -> Proc:
        return self._start(name, "worker", APP, "--lease", LEASE, "--backend", self.url, *extra)

    def _start(self, name: str, *args: str) -> Proc:
        proc = Proc(self.tmp, name, *args, env=self.env)
        self.procs.append(proc)
        return proc

    def ready(self, *procs: Proc) -> None:
        for proc in procs:
            proc.wait_for("running; Ctrl-C to stop", timeout=60)

    def settled(self, *workers: Proc) -> None:
        """On Kafka: until the workers' group gave each worker its own partition (a
        worker that joins later takes partitions, with their attempts, from the others:
        an attempt running then runs at the new owner too, which is allowed, at least
        once, but not what a test counting runs wants)."""
        if not self.kafka:
            return
        marker = "task queue 'default': assigned partitions "
        deadline = time.monotonic() + 60
        while True:
            last = []
            for worker in workers:
                lines = [line for line in worker.text().splitlines() if marker in line]
                last.append(lines[-1].split(marker)[1] if lines else None)
            one_each = None not in last and all("," not in str(a) for a in last)
            if one_each and len(set(last)) == len(workers):
                return
            assert time.monotonic() < deadline, f"the worker group did not settle: {last}"
            time.sleep(0.05)

    def send(self, count: int, prefix: str = "j", **data: Any) -> list[str]:
        jobs = [f"{prefix}{n}" for n in range(count)]
        for job in jobs:
            self.client.send("job.requested", {"job": job, **data}, key=job)
        return jobs

    def completed(self, jobs: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """Wait until every job's instance completed; their instances by job."""
        deadline = time.monotonic() + timeout
        while True:
            done = {
                i.key: i
                for i in self.client.instances(status="completed", limit=10_000)
                if i.key in jobs
            }
            if len(done) == len(jobs):
                return done
            for proc in self.procs:
                if proc.popen.poll() is None or proc.popen.returncode in (-9, 0):
                    continue
                raise AssertionError(f"{proc.log.name} exited:\n{proc.text()[-3000:]}")
            assert time.monotonic() < deadline, (
                f"{len(done)} of {len(jobs)} completed\n"
                + "\n".join(f"{p.log.name}: {p.text()[-1500:]}" for p in self.procs)
            )
            time.sleep(0.1)

    def effects_of(self, count: int, timeout: float = 30.0) -> list[tuple[str, int, int, str, int]]:
        deadline = time.monotonic() + timeout
        while len(rows := effects(self.effects_file)) < count:
            assert time.monotonic() < deadline, f"{count} runs expected, saw {rows}"
            time.sleep(0.05)
        return rows

    def check(self, jobs: list[str], calls: int = 1) -> Counter[str]:
        """Every job completed with its calls' outputs, each call ran at least once under
        its one idempotency key, and exactly one result per call was applied. Returns the
        runs by idempotency key."""
        instances = self.completed(jobs)
        ids = {i.id for i in instances.values()}
        runs = Counter(key for key, *_ in effects(self.effects_file) if key.split(":")[0] in ids)
        for job, instance in instances.items():
            assert [(o["job"], o["step"]) for o in instance.result] == [
                (job, s) for s in range(calls)
            ]
            journal = self.client.journal(instance.id)
            applied = Counter(e["s"] for e in journal if e["k"] == "res")
            assert len(applied) == calls and set(applied.values()) == {1}, journal
            calls_seq = [e["s"] for e in journal if e["k"] == "cmd"]
            for seq in calls_seq:
                assert runs[f"{instance.id}:{seq}"] >= 1, f"call {seq} of {job} never ran"
        return runs

    def results(self) -> dict[str, ov.Event]:
        """The task results on the log, by event id (the last of duplicates)."""
        out = {}
        for kind in (protocol.TASK_COMPLETED, protocol.TASK_FAILED):
            for logged in self.client.events(type=kind):
                assert logged.envelope is not None
                out[logged.envelope.id] = logged.envelope
        return out

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                assert proc.stop() == 0, proc.text()[-3000:]

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture(params=["sqlite", "kafka"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Run]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tasks.db'}"
    else:
        url = kafka_url(request.getfixturevalue("kafka_bootstrap"))
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    env.update(NO_COLOR="1", PYTHONFAULTHANDLER="1")
    env[EFFECTS_ENV] = str(tmp_path / "effects.txt")
    client = ov.Client(url, app=app)
    scenario = Run(url, tmp_path, env, client)
    try:
        yield scenario
    finally:
        scenario.kill_all()
        client.close()


def test_at_least_once_with_a_stable_key_and_forced_replay(run: Run) -> None:
    """Two workers, an engine that replays every instance on every input (cache 0):
    every call runs at least once under its key, each instance applies one result per
    call."""
    procs = run.engine(cache_size=0), run.worker("w1"), run.worker("w2")
    run.ready(*procs)
    jobs = run.send(12, calls=3)
    runs = run.check(jobs, calls=3)
    assert len(runs) == 12 * 3
    run.stop_all()


def test_a_worker_killed_mid_task_is_replaced_and_the_process_sees_one_result(run: Run) -> None:
    """The worker running the call is killed with -9: on SQLite its lease runs out, on
    Kafka the group rebalances; the other worker runs the same attempt again."""
    engine, one, two = run.engine(), run.worker("w1"), run.worker("w2")
    run.ready(engine, one, two)
    run.settled(one, two)
    jobs = run.send(1, prefix="hang", mode="hang_once")
    (first,) = run.effects_of(1)
    victim, survivor = (one, two) if first[2] == one.popen.pid else (two, one)
    assert first[2] == victim.popen.pid
    victim.popen.kill()  # SIGKILL: no drain, no result, no goodbye to the group
    victim.popen.wait()
    runs = run.check(jobs)
    rows = effects(run.effects_file)
    # the same attempt (same key, attempt 1) run by the victim, then by the survivor
    assert [(key, attempt, pid) for key, attempt, pid, *_ in rows] == [
        (first[0], 1, victim.popen.pid),
        (first[0], 1, survivor.popen.pid),
    ]
    assert runs == {first[0]: 2}
    assert len(run.results()) == 1  # one result on the log: the survivor's
    run.stop_all()


def test_results_that_arrive_while_the_engine_is_down_are_applied_once(run: Run) -> None:
    """The engine is killed with -9 while its calls run on the workers; the workers
    finish them meanwhile (their results are appended to the log), and the restarted
    engine applies each once, then runs the calls that follow."""
    engine, one, two = run.engine(), run.worker("w1"), run.worker("w2")
    run.ready(engine, one, two)
    run.settled(one, two)
    jobs = run.send(6, prefix="slow", mode="slow", seconds=1.5, calls=2)
    run.effects_of(6)  # every first call is running
    engine.popen.kill()
    engine.popen.wait()
    assert run.results() == {}  # none finished before the engine died
    deadline = time.monotonic() + 60
    while len(run.results()) < 6:  # the workers finish while the engine is down
        assert time.monotonic() < deadline, f"{len(run.results())} results of 6"
        time.sleep(0.1)
    assert all(i.status == "running" for i in run.client.instances())  # none applied yet
    run.ready(run.engine("engine-restarted", cache_size=0))
    runs = run.check(jobs, calls=2)
    assert len(runs) == 12
    run.stop_all()


def test_duplicate_and_late_results_are_ignored(run: Run) -> None:
    """A result sent again (past the log's dedup of ids) changes nothing; a result of an
    attempt given up at its deadline, arriving while the retry runs, is dropped (on
    SQLite the queue refuses it; on Kafka it reaches the log and the engine drops it).

    Timeline of ``late``: attempt 1 runs 4 s, its deadline is at 3 s; attempt 2 starts
    about 0.2 s later and runs 1.5 s, so attempt 1's result comes in the middle of it."""
    engine, one, two = run.engine(), run.worker("w1"), run.worker("w2")
    run.ready(engine, one, two)
    run.settled(one, two)
    (late,) = run.send(1, prefix="late", mode="slow_first", seconds=4, then=1.5, timeout=3)
    (dup,) = run.send(1, prefix="dup")
    instances = run.completed([late, dup])
    # the retry's result won: attempt 1 was still running on a worker
    assert instances[late].result == [{"job": late, "step": 0, "attempt": 2}]
    late_id = instances[late].id
    first_attempt = protocol.task_attempt_id(late_id, 1, 1)
    assert [(k, a) for k, a, *_ in effects(run.effects_file) if k.startswith(late_id)] == [
        (f"{late_id}:1", 1),
        (f"{late_id}:1", 2),
    ]
    # attempt 1 finishes, 4 s after it started
    first_result = protocol.task_result_id(first_attempt)
    deadline = time.monotonic() + 30
    while True:
        if run.kafka:  # no end marker: its result is written, and dropped by the engine
            done = first_result in run.results()
        else:  # its worker was told the attempt had ended, and wrote nothing
            done = any(
                f"the result of task attempt {first_attempt} was not taken: ended" in w.text()
                for w in (one, two)
            )
            assert first_result not in run.results()
        if done:
            break
        assert time.monotonic() < deadline, "attempt 1 never finished"
        time.sleep(0.1)
    if run.kafka:  # it reached the log before the retry's result, as the timeline says
        order = [
            e.envelope.id
            for e in run.client.events(type=protocol.TASK_COMPLETED)
            if e.envelope is not None and e.envelope.data["instance_id"] == late_id
        ]
        assert order == [
            first_result,
            protocol.task_result_id(protocol.task_attempt_id(late_id, 1, 2)),
        ]

    # the duplicate: dup's result again, as any producer could send it
    (dup_result,) = [
        e for e in run.results().values() if e.data["instance_id"] == instances[dup].id
    ]
    run.client.send_raw(Codec(app).to_bytes(dup_result), key=dup_result.partitionkey)
    # a job on the same keys (so the same partitions) after both: once it completes, the
    # engine has read what came before it
    run.client.send("job.requested", {"job": "marker"}, key=dup)
    run.client.send("job.requested", {"job": "marker"}, key=late)
    deadline = time.monotonic() + 60
    while len(run.client.instances(status="completed")) < 4:
        assert time.monotonic() < deadline, "the markers did not complete"
        time.sleep(0.1)
    for job in (late, dup):
        instance = run.client.instance(instances[job].id)
        assert instance.result == instances[job].result
        assert len([e for e in run.client.journal(instance.id) if e["k"] == "res"]) == 1
    assert run.client.dead_letters() == []  # dropped, not dead-lettered
    run.stop_all()


def test_a_slow_worker_does_not_block_the_other_tasks(run: Run) -> None:
    """Two workers; one is stuck on a slow call; the other calls all complete meanwhile.

    On SQLite each worker has one slot: the free worker takes every other attempt. On
    Kafka a partition's attempts go only to the member the group assigned it, which
    hands them to its own free slots: a member whose slots are all busy holds its
    partitions' attempts back (measured: with one slot each, none of the quick jobs
    completed in 60 s). So there each worker has two slots, one stuck (see
    docs/kafka.md)."""
    engine = run.engine()
    slots = "2" if run.kafka else "1"
    one, two = run.worker("w1", "--concurrency", slots), run.worker("w2", "--concurrency", slots)
    run.ready(engine, one, two)
    run.settled(one, two)
    (slow,) = run.send(1, prefix="stuck", mode="slow", seconds=60)
    run.effects_of(1)
    started = time.monotonic()
    quick = run.send(10, prefix="quick", calls=2)
    run.check(quick, calls=2)
    assert time.monotonic() - started < 30
    (instance,) = [i for i in run.client.instances() if i.key == slow]
    assert instance.status == "running"  # still stuck
