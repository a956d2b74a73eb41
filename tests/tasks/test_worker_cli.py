"""``overture worker`` and ``overture run``'s in-process worker as real processes on a
real SQLite file: a worker killed with -9 mid-task (its lease runs out, a second worker
runs the attempt again, exactly one result is accepted; side effects counted in a file),
a drained stop on SIGTERM, and what the command refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from overture import protocol
from overture.backends.sqlite import SqliteBackend
from overture.codec import Codec
from overture.tasks import completed, parse_request

from ..conftest import REPO_ROOT
from .attempts import attempt_record, publish

APP = "tests.tasks.workerapp:app"
CODEC = Codec()


class Proc:
    """An ``overture`` command running in the background, its output in a file."""

    def __init__(self, tmp_path: Path, name: str, *args: str, env: dict[str, str]) -> None:
        self.log = tmp_path / f"{name}.log"
        with self.log.open("w") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "overture.cli", *args],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert self.popen.poll() is None, f"exited early:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=30)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    env["NO_COLOR"] = "1"
    env["OVERTURE_TEST_EFFECTS"] = str(tmp_path / "effects.txt")
    return env


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, SqliteBackend]]:
    path = tmp_path / "w.db"
    backend = SqliteBackend(f"sqlite:///{path}", str(path), 1)
    yield f"sqlite:///{path}", backend
    backend.close()


def _wait_lines(path: Path, count: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"{count} side effects expected, saw {lines}"
        time.sleep(0.05)


def _wait_result(backend: SqliteBackend, attempt_id: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    while (found := backend.log.find_event(protocol.task_result_id(attempt_id))) is None:
        assert time.monotonic() < deadline, f"no result for {attempt_id}"
        time.sleep(0.05)
    return found.value


def _results(backend: SqliteBackend) -> list[bytes]:
    return [r.value for r in backend.log.read(0, 0, 1000)]


def test_a_worker_killed_mid_task_is_replaced_and_one_result_is_kept(
    tmp_path: Path, env: dict[str, str], db: tuple[str, SqliteBackend]
) -> None:
    url, backend = db
    effects = tmp_path / "effects.txt"
    record = attempt_record("t.side_effect", queue="effects", input={"order": "o1"})
    args = ("worker", APP, "--queue", "effects", "--lease", "1", "--backend", url)
    first = Proc(tmp_path, "first", *args, env=env)
    second: Proc | None = None
    try:
        first.wait_for("running; Ctrl-C to stop")
        publish(backend, record)
        (run_by,) = _wait_lines(effects, 1)  # the first run started, and hangs
        assert run_by == str(first.popen.pid)
        first.popen.kill()  # SIGKILL: no drain, no release; only the lease runs out
        first.popen.wait()
        second = Proc(tmp_path, "second", *args, env=env)
        result = orjson.loads(_wait_result(backend, record.id))
        assert result["data"]["output"] == "run 2"
        assert _wait_lines(effects, 2) == [str(first.popen.pid), str(second.popen.pid)]
        # exactly one result on the log, and the attempt is over for anyone else
        assert [orjson.loads(v)["id"] for v in _results(backend)] == [
            protocol.task_result_id(record.id)
        ]
        envelope, message = parse_request(CODEC, record.request)
        late = completed(CODEC, envelope, message, "late")
        assert backend.tasks.finish(record.id, "first", late) == "ended"
        assert second.stop() == 0
        assert "worker" in second.text() and "stopped" in second.text()
        assert "Traceback" not in second.text()
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_sigterm_drains_the_running_attempt(
    tmp_path: Path, env: dict[str, str], db: tuple[str, SqliteBackend]
) -> None:
    url, backend = db
    record = attempt_record("t.sleep", input=1.0)
    worker = Proc(tmp_path, "worker", "worker", APP, "--backend", url, env=env)
    try:
        worker.wait_for("running; Ctrl-C to stop")
        publish(backend, record)
        deadline = time.monotonic() + 10
        while backend._query("SELECT worker FROM tasks WHERE id = ?", (record.id,)) == [(None,)]:
            assert time.monotonic() < deadline, "the worker did not claim the attempt"
            time.sleep(0.02)
        assert worker.stop() == 0  # while the attempt runs: it gets the grace period
        assert orjson.loads(_wait_result(backend, record.id, 1.0))["data"]["output"] == "slept"
        assert "SIGTERM received" in worker.text() and "Traceback" not in worker.text()
    finally:
        worker.kill()


def test_run_runs_the_tasks_in_process_unless_told_not_to(
    tmp_path: Path, env: dict[str, str], db: tuple[str, SqliteBackend]
) -> None:
    url, backend = db
    plain = attempt_record("t.echo", instance="plain", input=1)
    engine = Proc(tmp_path, "run", "run", APP, "--backend", url, env=env)
    try:
        engine.wait_for("serving default, effects in this process")
        publish(backend, plain)
        assert orjson.loads(_wait_result(backend, plain.id))["data"]["output"] == {"echo": 1}
        assert engine.stop() == 0
    finally:
        engine.kill()

    untouched = attempt_record("t.echo", instance="untouched", input=2)
    engine = Proc(tmp_path, "run-no-tasks", "run", APP, "--no-tasks", "--backend", url, env=env)
    try:
        engine.wait_for("running; Ctrl-C to stop")
        publish(backend, untouched)
        time.sleep(1.5)
        assert backend.log.find_event(protocol.task_result_id(untouched.id)) is None
        assert "serving" not in engine.text()
        assert engine.stop() == 0
    finally:
        engine.kill()


def test_a_worker_for_an_app_without_tasks_is_refused(
    env: dict[str, str], db: tuple[str, SqliteBackend]
) -> None:
    url, _ = db
    done = subprocess.run(
        [sys.executable, "-m", "overture.cli", "worker", "examples.orders:app", "-b", url],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: app 'shop'") and "--queue" in line
    for bad in (["--concurrency", "0"], ["--lease", "0"], ["--queue", ""], ["-b", "memory://x"]):
        refused = subprocess.run(
            [sys.executable, "-m", "overture.cli", "worker", APP, "-b", url, *bad],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_a_worker_process_is_woken_by_the_engines_commits(
    tmp_path: Path, env: dict[str, str], db: tuple[str, SqliteBackend]
) -> None:
    """The process that commits attempts holds the engine's doorbell (as ``overture run``
    does); the worker registers its task bell there and is rung by each commit that
    publishes, instead of finding the attempts at its next poll (every second)."""
    url, backend = db
    unsubscribe = backend.log.subscribe(lambda: None)  # bind the doorbell, as an engine
    worker = Proc(tmp_path, "worker", "worker", APP, "--backend", url, env=env)
    try:
        worker.wait_for("running; Ctrl-C to stop")
        time.sleep(1.5)  # registered (it registers every second) and acknowledged
        started = time.monotonic()
        for i in range(10):
            record = attempt_record("t.echo", instance=f"rung{i}", input=i)
            publish(backend, record)
            _wait_result(backend, record.id)
        # polling alone would take about half a second per attempt
        assert time.monotonic() - started < 2.5
        assert worker.stop() == 0
    finally:
        worker.kill()
        unsubscribe()
