"""docs/protocol.md's "Over HTTP" section is what the task endpoints do: the limits in
its table are the models', its error examples are what a real server answers, and its
JavaScript worker loop is valid JavaScript."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from overture.http import models
from overture.http import tasks as http_tasks

from .conftest import Served
from .test_tasks import claim_one, path, served_tasks

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
SECTION = DOC[DOC.index("## Over HTTP") : DOC.index("## Push tasks")]

__all__ = ["served_tasks"]  # the fixture, used here


def example(name: str) -> str:
    match = re.search(rf"<!-- example: {name} -->\n```[a-z]*\n(.*?)\n```", SECTION, re.S)
    assert match, f"the HTTP section of docs/protocol.md has no example {name!r}"
    return match.group(1)


def test_the_tables_limits_are_the_models() -> None:
    claim = (
        f'"max": 1..{models.MAX_CLAIM} (1), "lease": 1..{models.MAX_LEASE:g} s (30), '
        f'"wait": 0..{models.MAX_CLAIM_WAIT:g} s (0)'
    )
    assert claim in SECTION
    assert f'"lease": 1..{models.MAX_LEASE:g} s (30)}}' in SECTION  # the heartbeat's
    assert f"1 to {models.MAX_WORKER} characters" in SECTION
    assert f"more than {http_tasks.REMEMBERED:,} attempts" in SECTION
    body = models.ClaimBody(worker="w", queues=["q"])
    assert (body.max, body.lease, body.wait) == (1, 30.0, 0.0)


async def test_the_error_examples_are_what_the_server_answers(served_tasks: Served) -> None:
    blocks = example("http").split("\n\n")
    bad_claim, bad_answer = blocks[-2], blocks[-1]
    body = json.loads(bad_claim.split("\n", 1)[1])
    reply = await served_tasks.http.post("/tasks/claim", json=body)
    status, shown = bad_answer.split(" ", 1)
    assert (reply.status_code, reply.json()) == (int(status), json.loads(shown))
    # the 409 of an attempt answered twice, with the example's id put in
    ended = next(b for b in blocks if b.startswith("409 "))
    task = await claim_one(served_tasks)
    await served_tasks.http.post(path(task, "complete"), json={"worker": "w"})
    again = await served_tasks.http.post(
        path(task, "fail"), json={"worker": "w", "error": {"type": "T", "message": ""}}
    )
    assert again.status_code == 409
    shown_error = json.loads(ended.split(" ", 1)[1])["error"]
    documented_id = re.search(r"'(task:[^']+)'", shown_error)
    assert documented_id is not None
    assert again.json()["error"] == shown_error.replace(documented_id.group(1), task["id"])


def test_the_javascript_loop_is_valid(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("this test needs Node.js (node) on the PATH")
    script = tmp_path / "worker.mjs"
    script.write_text(example("http-js"))
    checked = subprocess.run([node, "--check", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
