"""Pure unit tests of the instance machine: inputs and journal in, commands out."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import overture as ov
from overture.core import machine as m
from overture.events import Envelope

GOLDEN = Path(__file__).parent / "golden"


class Order(ov.Event, type="order.placed", key="order_id"):
    order_id: str


def inventory(order_id: str) -> bool:
    return True


def reserve(order_id: str) -> str:
    return "r"


def release(order_id: str) -> str:
    return "released"


async def order_process(ctx: ov.Context, order: Order) -> str:
    if not await ctx.step(inventory, order.order_id):
        return "out_of_stock"
    await ctx.step(reserve, order.order_id)
    ctx.compensate_with(release, order.order_id)
    try:
        await ctx.wait_for("payment.received", timeout=timedelta(minutes=30))
    except ov.WaitTimeout:
        await ctx.compensate()
        return "cancelled"
    ctx.emit("order.shipped", {"order_id": order.order_id})
    return "shipped"


SPEC = m.ProcessSpec("fulfil", 1, order_process, Order)
TRIGGER = Envelope(
    type="order.placed",
    data={"order_id": "o1"},
    id="evt-1",
    partitionkey="o1",
    time=__import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC),
)


def kinds(commands: list[m.Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def run_to_wait() -> m.Machine:
    machine = m.Machine(SPEC, "i1", "o1")
    assert kinds(machine.start(TRIGGER, 100.0)) == ["ScheduleStep"]
    assert kinds(machine.resolve(1, 101.0, ok=True)) == ["ScheduleStep"]
    (wait,) = machine.resolve(2, 102.0, ok="r")
    assert isinstance(wait, m.StartWait)
    assert (wait.event_type, wait.key, wait.due) == ("payment.received", "o1", 102.0 + 1800)
    assert machine.status == m.WAITING
    return machine


def test_happy_path_emits_then_finishes() -> None:
    machine = run_to_wait()
    payment = Envelope(type="payment.received", data={}, partitionkey="o1").to_dict()
    emit, finished = machine.resolve(3, 103.0, ok=payment)
    assert isinstance(emit, m.EmitEvent) and isinstance(finished, m.Finished)
    assert emit.envelope.partitionkey == "o1"
    assert emit.envelope.source == "/overture/fulfil/i1"
    assert (finished.status, finished.result) == ("completed", "shipped")
    assert machine.final


def test_timeout_runs_compensation_before_finishing() -> None:
    machine = run_to_wait()
    (comp,) = machine.resolve(3, 2000.0, err={"type": "WaitTimeout", "message": "late"})
    assert isinstance(comp, m.ScheduleStep)
    assert comp.call.name == "compensate:release"
    (finished,) = machine.resolve(comp.call.seq, 2001.0, ok="released")
    assert isinstance(finished, m.Finished) and finished.result == "cancelled"


def test_stale_or_unknown_resolutions_are_ignored() -> None:
    machine = run_to_wait()
    assert machine.resolve(1, 200.0, ok=True) == []  # already resolved
    assert machine.resolve(99, 200.0, ok=True) == []  # never requested


def test_replay_of_every_journal_prefix_rebuilds_the_same_state() -> None:
    machine = run_to_wait()
    payment = Envelope(type="payment.received", data={}, partitionkey="o1").to_dict()
    machine.resolve(3, 103.0, ok=payment)
    # a stored journal always ends where an activation ended: before the next input
    cuts = [i for i, e in enumerate(machine.journal) if e["k"] == "res"] + [len(machine.journal)]
    assert len(cuts) == 4
    for cut in cuts:
        prefix = machine.journal[:cut]
        replayed = m.Machine(SPEC, "i1", "o1")
        assert replayed.replay(prefix) == []
        assert replayed.stuck_reason is None
        assert replayed.journal == prefix
        assert replayed.take_entries() == []
    assert replayed.final and replayed.result == "shipped"


def test_replay_detects_a_different_operation() -> None:
    machine = run_to_wait()

    async def changed(ctx: ov.Context, order: Order) -> str:
        await ctx.sleep(timedelta(seconds=1))
        return "x"

    replayed = m.Machine(m.ProcessSpec("fulfil", 1, changed, Order), "i1", "o1")
    replayed.replay(machine.journal)
    assert replayed.status == m.STUCK
    assert replayed.stuck_reason is not None
    assert "requested '#1 sleep'" in replayed.stuck_reason
    assert "recorded '#1 step inventory'" in replayed.stuck_reason


def test_replay_detects_missing_operations() -> None:
    machine = run_to_wait()

    async def shorter(ctx: ov.Context, order: Order) -> str:
        await ctx.step(inventory, order.order_id)
        return "done early"

    replayed = m.Machine(m.ProcessSpec("fulfil", 1, shorter, Order), "i1", "o1")
    replayed.replay(machine.journal)
    assert replayed.status == m.STUCK
    assert "journal recorded" in (replayed.stuck_reason or "")


def test_user_code_cannot_swallow_non_determinism() -> None:
    machine = run_to_wait()

    async def swallowing(ctx: ov.Context, order: Order) -> str:
        try:
            await ctx.sleep(timedelta(seconds=1))
        except Exception:
            return "swallowed"
        return "x"

    replayed = m.Machine(m.ProcessSpec("fulfil", 1, swallowing, Order), "i1", "o1")
    replayed.replay(machine.journal)
    assert replayed.status == m.STUCK


def test_auto_compensation_is_lifo_on_failure() -> None:
    async def saga(ctx: ov.Context, order: Order) -> None:
        for name in ("a", "b", "c"):
            await ctx.step(reserve, name)
            ctx.compensate_with(release, name)
        raise ValueError("boom")

    machine = m.Machine(m.ProcessSpec("saga", 1, saga, Order), "i2", "o1")
    machine.start(TRIGGER, 1.0)
    machine.resolve(1, 2.0, ok="r")
    machine.resolve(2, 3.0, ok="r")
    (first,) = machine.resolve(3, 4.0, ok="r")
    order = []
    command: Any = first
    while isinstance(command, m.ScheduleStep):
        order.append(command.call.args[0])
        (command,) = machine.resolve(command.call.seq, 5.0, ok="released")
    assert order == ["c", "b", "a"]
    assert isinstance(command, m.Finished)
    assert command.status == "failed"
    assert command.error == {"type": "ValueError", "message": "boom"}


def test_gather_schedules_all_branches_at_once() -> None:
    async def fan(ctx: ov.Context, order: Order) -> list[Any]:
        return await ctx.gather(ctx.step(reserve, "a"), ctx.sleep(timedelta(seconds=5)))

    machine = m.Machine(m.ProcessSpec("fan", 1, fan, Order), "i3", "o1")
    assert kinds(machine.start(TRIGGER, 1.0)) == ["ScheduleStep", "StartTimer"]
    assert machine.resolve(2, 6.0) == []
    (finished,) = machine.resolve(1, 7.0, ok="r")
    assert isinstance(finished, m.Finished) and finished.result == ["r", None]


def test_instance_ids_are_derived_from_the_trigger_identity_only() -> None:
    early = Envelope(type="t", id="e1", source="/s", time=TRIGGER.time)
    # the same event (source + id) whatever its time or other attributes
    again = Envelope(type="t", id="e1", source="/s", time=TRIGGER.time + timedelta(hours=1))
    assert m.instance_id_for("p", early) == m.instance_id_for("p", again)
    assert m.instance_id_for("p", early) != m.instance_id_for("q", early)
    other_source = Envelope(type="t", id="e1", source="/elsewhere", time=TRIGGER.time)
    assert m.instance_id_for("p", early) != m.instance_id_for("p", other_source)
    assert len(m.instance_id_for("p", early)) == 32
    # the old derivation hashed the time too; it is kept to find instances it started
    assert m.legacy_instance_id_for("p", early) != m.legacy_instance_id_for("p", again)


def test_generated_event_ids_are_uuid7_and_their_instances_sort_by_time() -> None:
    first = Envelope(type="t")
    time.sleep(0.002)
    second = Envelope(type="t")
    assert uuid.UUID(first.id).version == 7
    assert m.instance_id_for("p", first) < m.instance_id_for("p", second)
    assert m.instance_id_for("p", first)[:12] == first.id.replace("-", "")[:12]


def test_golden_journal_of_format_1_still_replays() -> None:
    """A journal written by the first release must keep replaying (format stability)."""
    journal = json.loads((GOLDEN / "order_shipped_v1.json").read_text())
    assert journal[0]["fmt"] == 1
    replayed = m.Machine(SPEC, "golden", "o1")
    assert replayed.replay(journal) == []
    assert replayed.stuck_reason is None
    assert (replayed.status, replayed.result) == ("completed", "shipped")


def regenerate_golden() -> None:  # pragma: no cover - run by hand when adding a format
    machine = run_to_wait()
    payment = Envelope(
        type="payment.received", data={}, id="evt-2", partitionkey="o1", time=TRIGGER.time
    ).to_dict()
    machine.resolve(3, 103.0, ok=payment)
    (GOLDEN / "order_shipped_v1.json").write_text(json.dumps(machine.journal, indent=1))


def test_an_evicted_machine_is_freed_without_the_cycle_collector() -> None:
    import gc
    import weakref

    gc.disable()
    try:
        machine = run_to_wait()
        ref = weakref.ref(machine)
        machine.close()
        del machine
        assert ref() is None  # reference counting alone freed it: no cycles left behind
    finally:
        gc.enable()
