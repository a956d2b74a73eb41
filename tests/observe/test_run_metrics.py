"""``overture run --metrics`` and ``--http``'s ``/metrics`` as real processes: the engine's
own figures (not only the store's) reach a scrape, and a port in use fails at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.http.test_processes import APP, REPO_ROOT, _env, free_port, process, ready


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_until(url: str, name: str, labels: dict[str, str], want: float) -> dict:  # type: ignore[type-arg]
    key = (name, tuple(sorted(labels.items())))
    deadline = time.monotonic() + 30
    while True:
        got = samples(httpx.get(url, timeout=5).text)
        if got.get(key) == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_run_serves_the_engines_metrics_on_metrics_and_on_the_api(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    api_port, metrics_port = free_port(), free_port()
    log = tmp_path / "engine.log"
    args = ("run", APP, "--backend", url, "--http", f"127.0.0.1:{api_port}",
            "--metrics", f"127.0.0.1:{metrics_port}")  # fmt: skip
    with process(*args, log=log) as engine:
        api = f"http://127.0.0.1:{api_port}"
        ready(api, engine, log)
        for n in range(3):
            headers = {"ce-id": f"m-{n}", "ce-source": "/m", "ce-type": "order.placed",
                       "ce-specversion": "1.0"}  # fmt: skip
            reply = httpx.post(f"{api}/events", headers=headers, json={"order_id": f"o{n}",
                                                                       "quantity": 1})  # fmt: skip
            assert reply.status_code == 202, reply.text
        finished = ("overture_instances_finished_total", {"process": "fulfil",
                                                          "status": "completed"})  # fmt: skip
        for where in (f"http://127.0.0.1:{metrics_port}/metrics", f"{api}/metrics"):
            got = scrape_until(where, *finished, 3.0)
            assert got[(finished[0], tuple(sorted(finished[1].items())))] == 3.0, where
            # the store's gauge is there too, beside the engine's counters
            status = ("overture_instances", (("process", "fulfil"), ("status", "completed")))
            assert got[status] == 3.0, where
    assert f"metrics at http://127.0.0.1:{metrics_port}/metrics" in log.read_text()


def test_a_metrics_port_in_use_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "overture.cli", "run", APP, "--metrics", f"127.0.0.1:{port}",
             "--backend", f"sqlite:///{tmp_path / 'x.db'}"],
            cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"--metrics 127.0.0.1:{port}: cannot listen" in done.stderr
    assert "Traceback" not in done.stderr
