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
        runs = Counter(key for key, *_ in effects(self.effects_file))
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
        keys = {f"{i.id}:" for i in instances.values()}
        assert all(key.rsplit(":", 1)[0] + ":" in keys for key in runs), "a run of no call"
        return runs

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
