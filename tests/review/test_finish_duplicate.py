"""Review of round 1: ``finish`` of a result whose event id is on the log already (written
by another path) says ``"ended"`` on every backend, as SQLite does: the memory queue
said ``"accepted"`` although the log kept the earlier record and not this one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from overture import tasks
from overture.backends import open_backend
from overture.codec import Codec
from overture.ports import EngineBackend

from ..tasks.attempts import attempt_record, publish
from ..tasks.workerapp import app


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineBackend]:
    url = (
        f"memory://{uuid.uuid4().hex}"
        if request.param == "memory"
        else f"sqlite:///{tmp_path / 'd.db'}"
    )
    opened = open_backend(url)
    assert isinstance(opened, EngineBackend)
    yield opened
    opened.close()


def test_a_result_already_on_the_log_is_not_accepted_again(backend: EngineBackend) -> None:
    record = attempt_record("t.echo", input=1)
    publish(backend, record)
    codec = Codec(app)
    (claimed,) = backend.tasks.claim(["default"], "w", 1, 30.0)
    envelope, message = tasks.parse_request(codec, claimed.request)
    first = tasks.completed(codec, envelope, message, "first")
    assert backend.log.append([first]) != [None]  # another path wrote a result
    second = tasks.completed(codec, envelope, message, "second")
    assert backend.tasks.finish(claimed.id, "w", second) == "ended"
    found = backend.log.find_event(first.event_id or "")
    assert found is not None and found.value == first.value
    assert backend.tasks.claim(["default"], "w", 1, 0.01) == []  # the attempt is over
