"""kill -9 of a real `overture run` process, repeatedly, mid-run; then check everything.

Triggers keep arriving while the engine is being killed. Afterwards: every instance
completed with the right result, each wait got each awaited event exactly once, every
emitted event exists exactly once, nothing is stuck, dead-lettered or left over, and
every step and handler effect happened at least once, with each committed step result
naming exactly one recorded execution; re-executions (allowed, at least once) are counted
and reported.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import overture as ov

from .app import JobRequested, create_effects, read_effects

JOBS = 1000
ROOT = Path(__file__).resolve().parents[2]
STEP_KINDS = ("a", "b1", "b2", "c", "reviewed")


def start_engine(url: str, effects: Path, log: Path, cache_size: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OVERTURE_EFFECTS": str(effects),
        # the package of this checkout first (scripts/mutants runs a scratch copy)
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "PYTHONFAULTHANDLER": "1",
    }
    with log.open("ab") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "overture.cli", "run", "tests.durability.app:app"),
                *("--backend", url, "--cache-size", str(cache_size), "--log-level", "WARNING"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def completed(client: ov.Client) -> int:
    """Completed ``job`` instances (each job also has a ``review`` instance)."""
    return len(client.instances(process="job", status="completed", limit=10 * JOBS))


class TriggerSender(threading.Thread):
    """Sends the jobs ``first..last`` a few at a time, from its own client, while the
    test kills and restarts the engine. The last few wait for :attr:`release`, so the
    stream is still open when the first kill lands however slowly the machine runs."""

    def __init__(self, url: str, first: int, last: int) -> None:
        super().__init__(name="trigger-sender", daemon=True)
        self.url, self.first, self.last = url, first, last
        self.sending = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        self.sending.set()
        try:
            with ov.Client(self.url) as client:
                for start in range(self.first, self.last, 10):
                    stop = min(start + 10, self.last)
                    if stop == self.last:
                        self.release.wait(120)
                    client.send_many(
                        client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(start, stop)
                    )
                    time.sleep(0.03)
        except BaseException as error:
            self.error = error
        finally:
            self.sending.clear()


@pytest.mark.timeout(300)
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    effects = tmp_path / "effects.db"
    log = tmp_path / "engine.log"
    rng = random.Random(1234)
    create_effects(effects)
    with ov.Client(url) as client:
        check(client, url, effects, log, rng)


def check(client: ov.Client, url: str, effects: Path, log: Path, rng: random.Random) -> None:
    client.send_many(client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(JOBS // 2))
    sender = TriggerSender(url, JOBS // 2, JOBS)

    kills_mid_run = kills_while_sending = 0
    engine = start_engine(url, effects, log, cache_size=10_000)
    try:
        for round_no in range(4):
            if round_no == 1:  # the rest arrives while the engine is being killed
                sender.start()
                sender.sending.wait()
            # kill once progress is under way, at a random moment after that
            target = (round_no + 1) * JOBS // 6
            deadline = time.monotonic() + 60
            while completed(client) < target and time.monotonic() < deadline:
                assert engine.poll() is None, log.read_text()[-3000:]
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            done = completed(client)
            engine.send_signal(signal.SIGKILL)
            kills_while_sending += sender.sending.is_set()
            if round_no >= 1:  # a kill landed while the sender was running
                sender.release.set()
            engine.wait(timeout=10)
            if 0 < done < JOBS:
                kills_mid_run += 1
            # alternate the cache: with 0, every input replays the instance's journal
            engine = start_engine(url, effects, log, cache_size=0 if round_no % 2 else 10_000)

        sender.join(timeout=60)
        assert sender.error is None, sender.error
        deadline = time.monotonic() + 180
        while completed(client) < JOBS and time.monotonic() < deadline:
            assert engine.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        wait_for_handlers(client, effects, deadline)
    finally:
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    assert kills_mid_run >= 3, f"only {kills_mid_run} kills landed mid-run"
    assert kills_while_sending >= 1, "no kill landed while triggers were being sent"

    reexecuted = assert_all_done(client, effects)
    print(f"re-executions after {kills_mid_run} kills: {dict(reexecuted)}")


def wait_for_handlers(client: ov.Client, effects: Path, deadline: float) -> None:
    """Until every instance finished and every ``job.done`` was handled."""
    while time.monotonic() < deadline:
        finished = len(client.instances(status="completed", limit=10 * JOBS))
        notified = {job for kind, job, *_ in read_effects(effects) if kind == "notified"}
        if finished == 2 * JOBS and len(notified) == JOBS:
            return
        time.sleep(0.2)


def assert_all_done(client: ov.Client, effects: Path) -> Counter[str]:
    """Every job and review completed with the right result, each wait got its own
    event once, each emitted event exists exactly once, nothing was dead-lettered or left
    waiting, every step and handler ran at least once, and each committed step result is
    exactly one recorded execution with the step's one idempotency key. Returns the
    re-executions by kind."""
    instances = client.instances(limit=10 * JOBS)
    assert Counter((i.process, i.status) for i in instances) == {
        ("job", "completed"): JOBS,
        ("review", "completed"): JOBS,
    }
    rows = read_effects(effects)
    by_token = Counter(token for *_, token in rows)
    for instance in instances:
        n = int(instance.key[1:])
        result = instance.result
        if instance.process == "job":
            assert {k: result[k] for k in ("job", "total")} == {"job": instance.key, "total": n + 6}
        else:
            assert result["seen"] == [1, 2], f"{instance.key}: a wait got a re-delivered event"
        for token in result["tokens"]:
            assert by_token[token] == 1, (
                f"{instance.key}: committed result {token} not recorded once"
            )

    emitted = Counter(
        (e.envelope.type, e.envelope.data["job"], e.envelope.data.get("seq"))
        for e in client.events(limit=10 * JOBS)
        if e.envelope is not None and e.envelope.type in ("job.progress", "job.done")
    )
    assert len(emitted) == 3 * JOBS
    assert set(emitted.values()) == {1}, "an emitted event was duplicated"
    assert client.dead_letters() == []
    assert client.backend.store.waits() == [] and client.backend.store.work() == []

    executions = Counter((kind, job) for kind, job, *_ in rows)
    for i in range(JOBS):
        for kind in (*STEP_KINDS, "notified"):
            assert executions[(kind, f"j{i}")] >= 1, f"{kind} never ran for j{i}"
    keys: dict[tuple[str, str], set[str]] = {}
    for kind, job, ikey, *_ in rows:
        keys.setdefault((kind, job), set()).add(ikey)
    changed = {k: v for k, v in keys.items() if len(v) != 1}
    assert not changed, f"idempotency keys changed between executions: {changed}"
    reexecuted: Counter[str] = Counter()
    for (kind, _), count in executions.items():
        reexecuted[kind] += count - 1
    return reexecuted
