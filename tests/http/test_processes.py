"""The API as real processes: ``overture serve`` next to ``overture run --http``, an
event posted to one starting an instance whose result the long poll returns; readiness;
and what the commands refuse."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.http.shop:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OVERTURE_BACKEND", "OVERTURE_BROKER")}
    env["NO_COLOR"] = "1"
    return env


@contextmanager
def process(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``overture ARGS`` running; stopped with SIGTERM at the end (and must exit 0)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", *args],
            cwd=REPO_ROOT,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, log.read_text()


def ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_serve_next_to_run_http_posted_event_result_by_long_poll(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine_port, api_port = free_port(), free_port()
    engine_log, api_log = tmp_path / "engine.log", tmp_path / "api.log"
    run_args = ("run", APP, "--backend", url, "--http", f"127.0.0.1:{engine_port}")
    with process(*run_args, log=engine_log) as engine:
        engine_api = f"http://127.0.0.1:{engine_port}"
        ready(engine_api, engine, engine_log)
        with process("serve", APP, "--backend", url, "--port", str(api_port), log=api_log) as api:
            base = f"http://127.0.0.1:{api_port}"
            ready(base, api, api_log)
            headers = {
                "ce-id": "e2e-1",
                "ce-source": "/e2e",
                "ce-type": "order.placed",
                "ce-specversion": "1.0",
            }
            reply = httpx.post(
                f"{base}/events?start=true", headers=headers, json={"order_id": "z", "quantity": 4}
            )
            assert reply.status_code == 202, reply.text
            [instance_id] = reply.json()["instances"]
            result = httpx.get(
                f"{base}/instances/{instance_id}/result", params={"wait": 30}, timeout=40
            )
            assert result.status_code == 200, result.text
            assert result.json()["result"] == {"order": "z", "shipped": 4}
            # the engine's own API sees the same instance
            shown = httpx.get(f"{engine_api}/instances/{instance_id}")
            assert shown.json()["instance"]["status"] == "completed"
        assert "HTTP API of app 'httpshop'" in api_log.read_text()
    assert "HTTP API at http://127.0.0.1:" in engine_log.read_text()


def test_a_port_in_use_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (
            ("serve", APP, "--port", str(port)),
            ("run", APP, "--http", f"127.0.0.1:{port}"),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "overture.cli", *args,
                 "--backend", f"sqlite:///{tmp_path / 'x.db'}"],
                cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
            assert "Traceback" not in done.stderr


def test_run_http_refuses_a_malformed_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "overture.cli", "run", APP, "--http", "8080",
         "--backend", f"sqlite:///{tmp_path / 'x.db'}"],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_serve_refuses_a_memory_backend() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "overture.cli", "serve", APP, "--backend", "memory://"],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "memory://" in done.stderr and "Traceback" not in done.stderr
