"""``overture run`` as a real process: start, serve ``overture send`` processes, stop on
SIGTERM with exit code 0; and what it refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import REPO_ROOT, Invoke, failed, instance_for

import overture as ov

APP = "examples.orders:app"


def overture(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overture.cli", *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    env["NO_COLOR"] = "1"
    return env


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"engine exited early:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{path.read_text()}"
        time.sleep(0.05)


def test_run_serves_send_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    log_path = tmp_path / "engine.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", "run", APP, "--backend", url],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_text(log_path, "running; Ctrl-C to stop", proc, timeout=30)
        assert f"engine for app 'shop' on {url} (1 partition) running" in log_path.read_text()

        def send(event_type: str, **data: object) -> str:
            done = overture(
                "send", event_type, "--data", json.dumps(data), "--app", APP, "--backend", url
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        book = send("order.placed", order_id="o1", item="book", quantity=2)
        unicorn = send("order.placed", order_id="o2", item="unicorn", quantity=1)
        send("payment.received", order_id="o1", amount=25.0)

        with ov.Client(url) as client:
            shipped = client.wait(instance_for(client, book).id, timeout=30)
            out_of_stock = client.wait(instance_for(client, unicorn).id, timeout=30)
            assert (shipped.status, shipped.result) == ("completed", "shipped")
            assert (out_of_stock.status, out_of_stock.result) == ("completed", "out_of_stock")
            emitted = {e.envelope.type for e in client.events() if e.envelope is not None}
            assert {"order.shipped", "order.out_of_stock"} <= emitted

        # One engine per embedded database: a second one is refused, cleanly.
        busy = overture("run", APP, "--backend", url)
        assert busy.returncode == 1
        line = busy.stderr.strip().splitlines()[-1]
        assert line.startswith("error: another engine is already")
        assert "Traceback" not in busy.stderr
        # docs/operations.md quotes that line as it really is
        operations = " ".join((REPO_ROOT / "docs" / "operations.md").read_text().split())
        assert f"`{line.replace(str(tmp_path / 'shop.db'), 'overture.db')}`" in operations

        _wait_for_text(log_path, "notification: order o1 shipped", proc, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert "SIGTERM received" in output and "engine stopped" in output
    assert "Traceback" not in output


def test_run_unknown_app_is_a_usage_error(invoke: Invoke, orders: ModuleType) -> None:
    assert "cannot import 'nowhere'" in failed(invoke("run", "nowhere:app"), code=2)
    assert "has no attribute 'nope'" in failed(invoke("run", "examples.orders:nope"), code=2)
    assert "not an overture.App" in failed(invoke("run", "examples.orders:log"), code=2)
    failed(invoke("run", APP, "--log-level", "chatty"), code=2)


@pytest.mark.parametrize("option", ["--max-open-tasks", "--task-concurrency"])
def test_run_refuses_a_task_bound_below_one(
    invoke: Invoke, orders: ModuleType, option: str
) -> None:
    result = invoke("run", APP, option, "0")
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr


def test_run_module_that_fails_to_import(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_app_mod.py").write_text("import overture\nraise ValueError('boom')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds the cwd to it
    line = failed(invoke("run", "broken_app_mod:app"), code=2)
    assert "importing 'broken_app_mod' failed: ValueError: boom" in line
    assert "broken_app_mod.py:2" in line
    monkeypatch.delitem(sys.modules, "broken_app_mod", raising=False)


def test_python_dash_m_and_version() -> None:
    done = overture("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"overture {ov.__version__}"


def test_sigint_while_waiting_for_kafka_stops_within_a_second(tmp_path: Path) -> None:
    # nothing listens on port 1: every metadata request would wait its full 15 s
    log_path = tmp_path / "engine.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overture.cli",
                "run",
                APP,
                "--backend",
                "kafka://127.0.0.1:1/x",
            ],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_text(log_path, "connecting to kafka://127.0.0.1:1/x", proc, timeout=30)
        time.sleep(0.5)  # inside the first metadata request
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert "SIGINT received" in output and "stopped before the broker answered" in output
    assert "Traceback" not in output


def test_an_unresolvable_kafka_host_is_reported_at_once(tmp_path: Path) -> None:
    url = "kafka://no-such-host.invalid:9092/x"
    started = time.monotonic()
    done = overture("send", "x.y", "--key", "k", "--backend", url)
    assert done.returncode == 1 and time.monotonic() - started < 10
    assert "cannot resolve the Kafka host(s) of no-such-host.invalid:9092" in done.stderr

    log_path = tmp_path / "engine.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", "run", APP, "--backend", url],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:  # the engine keeps retrying (a cluster may come up later), saying why at once
        _wait_for_text(log_path, "cannot resolve the Kafka host(s)", proc, timeout=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
