"""``overture demo``: the order example end to end, on a throwaway SQLite database.

Four orders take the four paths of :mod:`overture.examples.orders` (shipped in the
package, so the demo runs from an installed wheel): one is paid and shipped, one is
out of stock, one is never paid (its wait times out, the reservation is released by the
saga compensation and the order is cancelled), and one is cancelled by an operator while
it waits. A real engine runs in-process on the real clock, so the timeout really passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..backends import open_backend
from ..client import FINAL, Client, Instance
from ..examples import orders as example
from ..protocol import Status
from ..runtime.clock import SystemClock
from ..runtime.host import Host
from . import render
from .common import CliError


@dataclass(frozen=True)
class Scenario:
    """One demo order: what is ordered, what happens to it, and how it should end."""

    order_id: str
    item: str
    quantity: int
    story: str
    expect_status: Status
    expect_result: str | None


SCENARIOS = (
    Scenario(
        "o-1001", "book", 1, "paid as soon as it waits for payment", Status.COMPLETED, "shipped"
    ),
    Scenario("o-1002", "unicorn", 1, "the item is out of stock", Status.COMPLETED, "out_of_stock"),
    Scenario(
        "o-1003",
        "lamp",
        2,
        "never paid: the wait times out, the saga compensates",
        Status.COMPLETED,
        "cancelled",  # its result
    ),
    Scenario(
        "o-1004", "book", 3, "cancelled by an operator while it waits", Status.CANCELLED, None
    ),
)


class _Notes(logging.Handler):
    """Collects the example's log lines (reservations, releases, notifications)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage()))


@contextlib.contextmanager
def _capture(logger: logging.Logger) -> Iterator[_Notes]:
    notes = _Notes()
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # shown in the story instead of as stray log lines
    logger.addHandler(notes)
    try:
        yield notes
    finally:
        logger.removeHandler(notes)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


async def _instance_for(client: Client, event_id: str, deadline: float) -> Instance:
    """The instance a trigger event started (the engine starts it asynchronously)."""
    while True:
        for instance in client.instances():
            if instance.trigger_id == event_id:
                return instance
        if time.monotonic() > deadline:
            raise CliError(f"no instance was started for event {event_id} in time")
        await asyncio.sleep(0.02)


async def _until(
    client: Client, instance_id: str, statuses: frozenset[str], deadline: float
) -> Instance:
    while True:
        instance = client.instance(instance_id)
        if instance.status in statuses:
            return instance
        if time.monotonic() > deadline:
            raise CliError(f"instance {instance_id} is still {instance.status}; giving up")
        await asyncio.sleep(0.02)


async def run_demo(console: Console, *, payment_timeout: float, backend: str | None) -> bool:
    """Run the scenarios and tell the story on ``console``; True if every order ended as
    expected."""
    module = example
    app = module.make_app(payment_timeout=timedelta(seconds=payment_timeout))
    with contextlib.ExitStack() as stack:
        if backend is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="overture-demo-"))
            backend = f"sqlite:///{Path(tmp) / 'demo.db'}"
        notes = stack.enter_context(_capture(logging.getLogger(module.__name__)))
        console.print(
            Panel.fit(
                f"[bold]Overture demo[/]: the order saga of {module.__name__}\n"
                f"backend {backend}, payment timeout {payment_timeout:g}s, real clock",
                border_style="blue",
            )
        )
        engine_backend = open_backend(backend)
        stack.callback(engine_backend.close)
        # a Host, as `overture run` runs the engines: one on an embedded backend, one per
        # partition on Kafka
        host = Host(app, engine_backend, clock=SystemClock())
        await host.start()
        runner = asyncio.create_task(host.run())
        client = stack.enter_context(Client(backend, app=app))
        try:
            instances = await _drive(console, client, module, payment_timeout)
        finally:
            await host.stop()
            await runner
        return _report(console, client, instances, notes)


async def _drive(
    console: Console, client: Client, module: ModuleType, payment_timeout: float
) -> dict[str, Instance]:
    deadline = time.monotonic() + payment_timeout + 10
    console.rule("1. four customers place orders")
    event_ids: dict[str, str] = {}
    for sc in SCENARIOS:
        event = module.OrderPlaced(order_id=sc.order_id, item=sc.item, quantity=sc.quantity)
        event_ids[sc.order_id] = client.send(event)
        console.print(
            f"  sent [bold]order.placed[/] {sc.order_id}: {sc.quantity} x {sc.item:<8}"
            f" [dim]({sc.story})[/]"
        )
    started = {
        order_id: await _instance_for(client, event_id, deadline)
        for order_id, event_id in event_ids.items()
    }

    console.rule("2. payments and operators")
    paid = await _until(client, started["o-1001"].id, frozenset({Status.WAITING}), deadline)
    client.send(module.PaymentReceived(order_id="o-1001", amount=12.5))
    console.print(
        f"  o-1001 is {paid.status} for its payment: sent [bold]payment.received[/] (12.5)"
    )
    waiting = await _until(client, started["o-1004"].id, frozenset({Status.WAITING}), deadline)
    client.cancel(waiting.id)
    console.print(f"  o-1004 is {waiting.status} for its payment: an operator cancels it")
    console.print(f"  o-1003 gets no payment: its {payment_timeout:g}s timeout will fire")

    finished: dict[str, Instance] = {}
    with console.status("waiting for every order to finish…"):
        for order_id, instance in started.items():
            finished[order_id] = await _until(client, instance.id, FINAL, deadline)
    return finished


def _report(
    console: Console, client: Client, instances: dict[str, Instance], notes: _Notes
) -> bool:
    console.rule("3. outcomes")
    table = Table(show_lines=False)
    for column in ("order", "item", "scenario", "status", "result", "as expected"):
        table.add_column(column)
    all_ok = True
    for sc in SCENARIOS:
        instance = instances[sc.order_id]
        ok = instance.status == sc.expect_status and instance.result == sc.expect_result
        all_ok = all_ok and ok
        table.add_row(
            *render.cells(
                sc.order_id,
                f"{sc.quantity} x {sc.item}",
                sc.story,
                render.status_text(instance.status),
                render.outcome(instance) or "-",
                Text("yes", style="green") if ok else Text("NO", style="bold red"),
            )
        )
    console.print(table)

    console.rule("4. timelines (the journals)")
    for sc in SCENARIOS:
        instance = instances[sc.order_id]
        console.print(
            Text.assemble(
                (f"{sc.order_id} ", "bold"),
                f"instance {instance.id} ",
                render.status_text(instance.status),
            )
        )
        console.print(render.timeline_table(client.journal(instance.id)))
        console.print()

    console.rule("5. events the processes emitted")
    emitted = [e for e in client.events() if e.envelope and e.envelope.source.startswith("/")]
    events = Table()
    for column in ("type", "key", "data", "emitted by"):
        events.add_column(column)
    for event in emitted:
        env = event.envelope
        assert env is not None
        events.add_row(
            *render.cells(env.type, env.partitionkey or "", render.short(env.data), env.source)
        )
    console.print(events)

    console.rule("6. what the steps and handlers did (log of the example)")
    for _, line in notes.lines:
        console.print(Text(f"  {line}"))
    console.print(
        "\n  note: an operator cancellation (o-1004) abandons what the instance was waiting "
        "for and runs its registered compensations, so its reservation is released too."
    )
    console.print()
    if all_ok:
        console.print("[bold green]demo finished: every order ended as expected[/]")
    else:
        console.print("[bold red]demo finished, but some orders did not end as expected[/]")
    return all_ok
