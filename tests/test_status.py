"""One definition of the instance statuses (``core/status.py``), stored as plain strings."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import overture as ov
from overture import protocol
from overture.core import machine
from overture.core.status import FINAL, Status
from overture.testing import Harness

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "overture"


def test_the_statuses_and_the_final_ones() -> None:
    assert [s.value for s in Status] == [
        "running",
        "waiting",
        "completed",
        "failed",
        "cancelled",
        "stuck",
    ]
    assert {"completed", "failed", "cancelled"} == FINAL
    assert protocol.Status is ov.Status is Status and protocol.FINAL is FINAL
    assert machine.FINAL_STATUSES is FINAL and machine.STUCK is Status.STUCK


def test_no_module_defines_the_statuses_again() -> None:
    """A second definition (a backend's own final set, a CLI's list of names) drifts."""
    name = r"""["'](?:running|waiting|completed|failed|cancelled|stuck)["']"""
    listed = re.compile(rf"{name}\s*,\s*{name}")
    lone = re.compile(r"""["'](?:running|waiting|stuck)["']""")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "status.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if listed.search(line) or lone.search(line)
    ]
    assert found == []


class Hello(ov.Event, type="hello", key="name"):
    name: str


def _app() -> ov.App:
    app = ov.App("statuses")

    @app.process(trigger=Hello, key="name")
    async def greet(ctx: ov.Context, event: Hello) -> str:
        return f"hi {event.name}"

    return app


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_instance_status_is_a_status_stored_as_its_string(
    kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    url = "memory://statuses" if kind == "memory" else f"sqlite:///{path}"
    async with Harness(_app(), url) as h:
        h.client.send(Hello(name="ada"))
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status is Status.COMPLETED
        assert instance.status == "completed" and f"{instance.status}" == "completed"
        assert h.client.instances(status="completed") == [instance]
    if kind == "sqlite":
        with sqlite3.connect(path) as db:
            (stored,) = db.execute("SELECT status, typeof(status) FROM instances").fetchall()
        assert stored == ("completed", "text")
