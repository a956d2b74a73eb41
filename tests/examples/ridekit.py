"""Runs ``examples/ridesharing.py`` as its README does: real processes (the engine, the
services, the drivers script and, on Kafka, the Node.js notification worker) on one
backend, with short deadlines; the test drives it with a client of the app."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

import overture as ov

from ..conftest import REPO_ROOT

FINAL = {"completed", "failed", "cancelled", "stuck"}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Rides:
    """The example running on ``url``, its processes and what they wrote."""

    url: str
    app_path: str
    env: dict[str, str]
    services: str
    workdir: Path
    node_dir: Path | None
    client: ov.Client
    stack: ExitStack
    engine: subprocess.Popen[bytes] | None = None
    drivers_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.drivers_log = self.workdir / "drivers.jsonl"

    # -- processes -----------------------------------------------------------------------

    def spawn(
        self, name: str, command: list[str], cwd: Path = REPO_ROOT
    ) -> subprocess.Popen[bytes]:
        out: IO[bytes] = (self.workdir / f"{name}.log").open("ab")
        self.stack.callback(out.close)
        process = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=out, stderr=out)
        self.stack.callback(stop, process)
        return process

    def start_engine(self) -> None:
        overture = str(Path(sys.executable).with_name("overture"))
        self.engine = self.spawn("engine", [overture, "run", self.app_path, "--backend", self.url])

    def kill_engine(self) -> None:
        """Kill the engine with SIGKILL, as a crash would."""
        assert self.engine is not None
        self.engine.send_signal(signal.SIGKILL)
        self.engine.wait(timeout=30)

    def start_drivers(self, *answers: str) -> None:
        """The drivers script, answering as ``DRIVER=accept|decline[@SECONDS]`` says; its
        JSON lines go to :attr:`drivers_log`."""
        command = [sys.executable, "-m", "examples.ridesharing_drivers", "--backend", self.url]
        for answer in answers:
            command += ["--answer", answer]
        out = self.drivers_log.open("ab")
        self.stack.callback(out.close)
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=out)
        self.stack.callback(stop, process)

    # -- what happened -------------------------------------------------------------------

    def request(self, trip_id: str, drivers: list[str], estimate_cents: int = 2500) -> None:
        self.client.send(
            "trip.requested",
            {
                "trip_id": trip_id,
                "rider_id": f"rider-{trip_id}",
                "drivers": drivers,
                "estimate_cents": estimate_cents,
            },
        )

    def send(self, event_type: str, **data: Any) -> None:
        self.client.send(event_type, data)

    def instance(self, trip_id: str) -> ov.Instance | None:
        found = [i for i in self.client.instances() if i.key == trip_id]
        return found[0] if found else None

    def result(self, trip_id: str, timeout: float = 40.0) -> Any:
        def final() -> Any:
            found = self.instance(trip_id)
            return found if found is not None and found.status in FINAL else None

        done = wait_until(final, f"trip {trip_id} to finish", timeout)
        assert done.status == "completed", (done.status, done.error)
        return done.result

    def waiting_for(self, trip_id: str, event_type: str, timeout: float = 40.0) -> None:
        """Until the trip's instance waits for ``event_type``."""

        def waiting() -> bool:
            found = self.instance(trip_id)
            if found is None:
                return False
            waits = [
                e
                for e in self.client.journal(found.id)
                if e.get("op") == "wait" and e.get("n") == event_type
            ]
            return bool(waits)

        wait_until(waiting, f"trip {trip_id} to wait for {event_type}", timeout)

    def ledger(self) -> list[dict[str, Any]]:
        """The effects the services applied, as their ledger file holds them."""
        path = self.workdir / "ledger.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def effects(self, trip_id: str) -> list[str]:
        return sorted(e["op"] for e in self.ledger() if e["trip_id"] == trip_id)

    def answers(self) -> list[dict[str, Any]]:
        """The drivers script's answers so far, in order."""
        if not self.drivers_log.exists():
            return []
        lines = [json.loads(x) for x in self.drivers_log.read_text().splitlines() if x]
        return [x for x in lines if x["event"] == "answer"]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def rides(
    url: str,
    workdir: Path,
    *,
    node_dir: Path | None = None,
    offer_seconds: float = 20.0,
    pickup_seconds: float = 60.0,
) -> Iterator[Rides]:
    """The example on ``url``: the services and the engine running (on Kafka with
    ``polyglot_app`` and the Node.js worker of ``node_dir`` serving ``notify``)."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    port = free_port()
    services = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RIDESHARING_WEBHOOK_SECRET": secret,
        "RIDESHARING_SERVICES": services,
        "RIDESHARING_OFFER_SECONDS": str(offer_seconds),
        "RIDESHARING_PICKUP_SECONDS": str(pickup_seconds),
        "PYTHONPATH": str(REPO_ROOT),
    }
    polyglot = node_dir is not None
    app_path = "examples.ridesharing:" + ("polyglot_app" if polyglot else "app")
    from examples import ridesharing

    app = ridesharing.make_app(python_notifier=not polyglot)
    with ExitStack() as stack:
        client = stack.enter_context(ov.Client(url, app=app))
        kit = Rides(url, app_path, env, services, workdir, node_dir, client, stack)
        kit.spawn(
            "services",
            [
                sys.executable,
                "-m",
                "examples.ridesharing_services",
                "--port",
                str(port),
                "--ledger",
                str(workdir / "ledger.jsonl"),
            ],
        )
        wait_until(lambda: _answers(f"{services}/ledger"), "the services to listen")
        if node_dir is not None:
            bootstrap, namespace = url.removeprefix("kafka://").split("?")[0].split("/")
            kit.spawn(
                "node",
                [
                    "node",
                    "kafka-worker.mjs",
                    "--brokers",
                    bootstrap,
                    "--namespace",
                    namespace,
                    "--queue",
                    "notify",
                ],
                cwd=node_dir,
            )
        kit.start_engine()
        yield kit


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
