"""End to end over real processes: an engine (``overture run --no-tasks``), the HTTP API
(``overture serve``, one or two of them) and the Node.js worker of examples/node that
speaks the task endpoints with nothing but ``fetch`` (``node http-worker.mjs``). A
process calling ``ctx.call`` gets the Node worker's output or its failure; a worker
killed with -9 mid-task leaves the attempt to another one once its lease runs out."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from overture import protocol
from overture.backends import open_backend
from overture.codec import Codec

from ..conftest import kafka_url
from .taskshop import QUEUE
from .test_processes import free_port, process, ready

APP = "tests.http.taskshop:app"
NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"


class NodeWorker:
    """``node http-worker.mjs`` running, its JSON lines collected."""

    def __init__(self, api: str, *args: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            ["node", "http-worker.mjs", "--api", api, "--queue", QUEUE, *args],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(orjson.loads(line) for line in stdout), daemon=True
        )
        self._reader.start()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == kind]

    def wait_for(self, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, self.lines
            assert time.monotonic() < deadline, self.lines
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=30) == 0, self.lines
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextmanager
def node_worker(api: str, *args: str) -> Iterator[NodeWorker]:
    worker = NodeWorker(api, *args)
    try:
        yield worker
    finally:
        worker.stop()


@contextmanager
def system(tmp_path: Path, url: str, apis: int = 1) -> Iterator[list[str]]:
    """An engine without in-process tasks and ``apis`` ``overture serve`` processes on
    ``url``; the APIs' base URLs."""
    with ExitStack() as stack:
        stack.enter_context(
            process("run", APP, "--backend", url, "--no-tasks", log=tmp_path / "engine.log")
        )
        bases = []
        for n in range(apis):
            port, log = free_port(), tmp_path / f"api-{n}.log"
            api = stack.enter_context(
                process("serve", APP, "--backend", url, "--port", str(port), log=log)
            )
            base = f"http://127.0.0.1:{port}"
            ready(base, api, log)
            bases.append(base)
        yield bases


def start(api: str, order_id: str, **fields: Any) -> str:
    """Post a charge request to ``api``; the id of the instance it starts."""
    event = {
        "specversion": "1.0",
        "id": f"charge-{order_id}",
        "source": "/e2e",
        "type": "charge.requested",
        "data": {"order_id": order_id, **fields},
    }
    reply = httpx.post(
        f"{api}/events?start=true",
        content=orjson.dumps(event),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert reply.status_code == 202, reply.text
    [instance_id] = reply.json()["instances"]
    return str(instance_id)


def result(api: str, instance_id: str, wait: float = 60) -> Any:
    reply = httpx.get(
        f"{api}/instances/{instance_id}/result", params={"wait": wait}, timeout=wait + 10
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["result"]


def results_on_log(url: str, instance_id: str) -> list[str]:
    """The ids of the task result events of ``instance_id`` on the log."""
    backend = open_backend(url)
    codec = Codec()
    try:
        log = backend.log
        ids = []
        for partition in range(log.partitions):
            for record in log.read(partition, 0, 100_000):
                envelope = codec.from_bytes(record.value)
                if envelope.type in (protocol.TASK_COMPLETED, protocol.TASK_FAILED) and (
                    envelope.data["instance_id"] == instance_id
                ):
                    ids.append(envelope.id)
        return ids
    finally:
        backend.close()


def test_calls_get_the_node_workers_outputs_and_failures(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    with system(tmp_path, url) as [api], node_worker(api, "--lease", "5", "--wait", "5") as node:
        authorized = start(api, "o-1", amount=12)
        declined = start(api, "o-2", task="payment.decline")
        unknown = start(api, "o-3", task="no.such.task")
        outcome = result(api, authorized)
        key = outcome["output"]["authorization"].removeprefix("AUTH-")
        assert outcome == {
            "output": {"order_id": "o-1", "authorization": f"AUTH-{key}", "approved": True}
        }
        assert key.startswith(authorized)  # the call's idempotency key
        assert result(api, declined) == {
            "failed": "CardDeclined",
            "message": "card for o-2 declined",
            "attempts": 1,  # retryable false: no second attempt, whatever the policy
        }
        assert result(api, unknown)["failed"] == "UnknownTask"
        assert len(node.events("completed")) == 1 and len(node.events("failed")) == 2
    assert node.events("stopped"), node.lines  # SIGTERM: a clean stop


def test_a_node_worker_killed_mid_task_leaves_it_to_another(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    with system(tmp_path, url) as [api]:
        first = NodeWorker(api, "--lease", "2", "--wait", "5")
        try:
            instance_id = start(api, "o-9", task="sleep", seconds=4)
            first.wait_for(lambda: bool(first.events("claimed")))
            [claimed] = first.events("claimed")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)
        finally:
            first.stop()
        # two workers now: the one that claims the attempt heartbeats every ~0.7 s, so
        # the other never takes it while it sleeps (4 s, twice the lease)
        with (
            node_worker(api, "--lease", "2", "--wait", "5") as second,
            node_worker(api, "--lease", "2", "--wait", "5") as third,
        ):
            outcome = result(api, instance_id)
            claims = second.events("claimed") + third.events("claimed")
        assert outcome == {"output": {"slept": 4, "order_id": "o-9"}}
        assert [c["id"] for c in claims] == [claimed["id"]]  # same attempt, handed out once
        assert not second.events("lost") and not third.events("lost")
    assert results_on_log(url, instance_id) == [protocol.task_result_id(claimed["id"])]


def test_two_serve_processes_share_one_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    with system(tmp_path, url, apis=2) as [one, two]:
        # a Python client as the HTTP worker: an attempt claimed through one API can be
        # answered through the other (on SQLite every API process finds the request in
        # the queue), once: a second answer through the first API is a 409
        held = start(one, "held")
        reply = httpx.post(
            f"{two}/tasks/claim",
            json={"worker": "py", "queues": [QUEUE], "wait": 10, "lease": 30},
            timeout=20,
        )
        [task] = reply.json()["tasks"]
        beat = httpx.post(f"{one}/tasks/{task['id']}/heartbeat", json={"worker": "py", "lease": 30})
        assert beat.status_code == 200, beat.text
        done = httpx.post(f"{one}/tasks/{task['id']}/complete", json={"worker": "py", "output": 7})
        assert done.status_code == 200, done.text
        again = httpx.post(f"{two}/tasks/{task['id']}/complete", json={"worker": "py"})
        assert again.status_code == 409, again.text
        unknown = httpx.post(f"{two}/tasks/task:nope:1:1/complete", json={"worker": "py"})
        assert unknown.status_code == 404, unknown.text
        assert result(one, held) == {"output": 7}
        assert results_on_log(url, held) == [protocol.task_result_id(task["id"])]
        # a Node worker on each API: every attempt handed out once, all answered
        args = ("--concurrency", "2", "--lease", "10", "--wait", "5")
        with node_worker(one, *args) as left, node_worker(two, *args) as right:
            ids = [
                start(one if n % 2 else two, f"s-{n}", task="sleep", seconds=0.3) for n in range(10)
            ]
            outcomes = [result(one, i) for i in ids]
            claims = [c["id"] for c in left.events("claimed") + right.events("claimed")]
        assert outcomes == [{"output": {"slept": 0.3, "order_id": f"s-{n}"}} for n in range(10)]
        assert len(claims) == len(set(claims)) == 10
        assert left.events("claimed") and right.events("claimed")  # both served


def test_on_kafka_engine_serve_and_node_worker(tmp_path: Path, kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap)
    with system(tmp_path, url) as [api], node_worker(api, "--lease", "10", "--wait", "5") as node:
        authorized = start(api, "k-1", amount=3)
        declined = start(api, "k-2", task="payment.decline")
        outcome = result(api, authorized, wait=90)
        assert outcome["output"]["approved"] is True
        assert result(api, declined, wait=90)["failed"] == "CardDeclined"
        assert len(node.events("completed")) == 1 and len(node.events("failed")) == 1


@pytest.fixture(autouse=True)
def _node_available() -> None:
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0:
        pytest.fail("these tests need Node.js 18+ (node) on the PATH")


def test_run_http_serves_the_task_endpoints(tmp_path: Path) -> None:
    # the API in the engine's own process (and no in-process Python worker)
    url = f"sqlite:///{tmp_path / 'run.db'}"
    port, log = free_port(), tmp_path / "run.log"
    args = ("run", APP, "--backend", url, "--no-tasks", "--http", f"127.0.0.1:{port}")
    with process(*args, log=log) as engine:
        api = f"http://127.0.0.1:{port}"
        ready(api, engine, log)
        with node_worker(api, "--lease", "5", "--wait", "5") as node:
            instance_id = start(api, "r-1", task="echo", amount=5)
            assert result(api, instance_id) == {
                "output": {"order_id": "r-1", "amount": 5, "seconds": 0.0}
            }
        assert len(node.events("completed")) == 1
