"""Temporal workflow and activity definitions (a small module: the workflow sandbox
re-imports it for every workflow run, so it imports nothing but temporalio)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

TIMEOUT = timedelta(seconds=60)


@activity.defn
async def check_inventory(item: str, quantity: int) -> bool:
    return quantity < 100


@activity.defn
async def charge(order_id: str, quantity: int) -> str:
    return f"rcpt-{order_id}"


@activity.defn
async def ship(order_id: str) -> str:
    return f"trk-{order_id}"


ACTIVITIES = [check_inventory, charge, ship]


@workflow.defn(name="Fulfil")
class Fulfil:
    """W1: three sequential trivial activities, then complete."""

    @workflow.run
    async def run(self, order_id: str) -> dict[str, str]:
        in_stock = await workflow.execute_activity(
            check_inventory, args=["book", 1], start_to_close_timeout=TIMEOUT
        )
        if not in_stock:
            return {"outcome": "out_of_stock"}
        receipt = await workflow.execute_activity(
            charge, args=[order_id, 1], start_to_close_timeout=TIMEOUT
        )
        tracking = await workflow.execute_activity(
            ship, args=[order_id], start_to_close_timeout=TIMEOUT
        )
        return {"outcome": "shipped", "receipt": receipt, "tracking": tracking}


@workflow.defn(name="AwaitPayment")
class AwaitPayment:
    """W2: wait for the ``payment`` signal (the workflow id is the order id), complete."""

    def __init__(self) -> None:
        self.amount: int | None = None

    @workflow.run
    async def run(self, order_id: str) -> int:
        await workflow.wait_condition(lambda: self.amount is not None)
        assert self.amount is not None
        return self.amount

    @workflow.signal
    def payment(self, amount: int) -> None:
        self.amount = amount
