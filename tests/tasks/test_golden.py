"""The journal of a process that called remote tasks, kept as a golden fixture: a later
release must replay it to the same result without publishing anything (journal format 1
with ``call`` operations)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import overture as ov
from overture.core import machine as m
from overture.events import Envelope

GOLDEN = Path(__file__).parent / "golden" / "calls_v1.json"


async def ship(ctx: ov.Context, event: ov.Event) -> Any:
    label = await ctx.call("label.print", {"order": event.data["order"]})
    try:
        await ctx.call("courier.book", label)
    except ov.TaskFailed as error:
        return {"label": label, "courier": f"{error.error_type} after {error.attempts}"}
    return {"label": label, "courier": "booked"}


SPEC = m.ProcessSpec("ship", 1, ship, ov.Event, "golden")
TRIGGER = Envelope(
    type="order.placed",
    data={"order": "o1"},
    id="evt-1",
    source="/test",
    time=datetime(2026, 1, 1, tzinfo=UTC),
    partitionkey="o1",
)


def test_the_golden_journal_of_calls_replays_without_publishing() -> None:
    journal = json.loads(GOLDEN.read_text())
    assert journal[0]["fmt"] == 1
    assert [e["op"] for e in journal if e["k"] == "cmd"] == ["call", "call"]
    replayed = m.Machine(SPEC, "golden", "o1")
    assert replayed.replay(journal) == []
    assert replayed.stuck_reason is None
    assert (replayed.status, replayed.result) == (
        "completed",
        {"label": "L-1", "courier": "TaskTimeout after 2"},
    )


def test_the_golden_journal_is_what_the_machine_writes() -> None:
    assert _journal() == json.loads(GOLDEN.read_text())


def _journal() -> list[dict[str, Any]]:
    machine = m.Machine(SPEC, "golden", "o1")
    (first,) = machine.start(TRIGGER, 100.0)
    assert isinstance(first, m.ScheduleTask)
    (second,) = machine.resolve(1, 101.0, ok="L-1")
    assert isinstance(second, m.ScheduleTask) and second.call.input == "L-1"
    timeout = {"type": "TaskTimeout", "message": "attempt 1 got no result by its deadline"}
    machine.note_retry(2, 1, timeout, 112.0, 111.0)
    last = {**timeout, "message": "attempt 2 got no result by its deadline", "attempts": "2"}
    (finished,) = machine.resolve(2, 122.0, err=last)
    assert isinstance(finished, m.Finished)
    return json.loads(json.dumps(machine.journal))


def regenerate_golden() -> None:  # pragma: no cover - run by hand when adding a format
    GOLDEN.write_text(json.dumps(_journal(), indent=1) + "\n")
