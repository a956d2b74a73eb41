"""Ride sharing: one process per trip, orchestrating services written by other teams.

A ``trip.requested`` event starts a ``trip`` instance (keyed by the trip id) that:

1. offers the trip to the nearby drivers at once, each offer a remote task
   (``driver.offer`` on the ``drivers`` queue, answered by the drivers' app: here
   ``examples/ridesharing_drivers.py``) with a deadline. ``ctx.first`` takes the answers
   as they come: a decline keeps waiting, the first acceptance wins and ``ctx.abandon``
   withdraws the other offers (their late answers are refused). Nobody accepting before
   the deadlines cancels the trip for the rider;
2. authorizes the payment with a push task (``payment.authorize``): the engine's worker
   POSTs the request, signed per Standard Webhooks, to the payments service
   (``examples/ridesharing_services.py``);
3. notifies the rider with the ``notify.rider`` task on the ``notify`` queue: in ``app``
   a Python function; in ``polyglot_app`` nothing in Python, the Node.js worker of
   ``examples/node`` answers it (on Kafka);
4. waits for ``trip.picked_up`` and ``trip.dropped_off`` (each with a timeout), and
   charges the fare at drop-off (``payment.capture``, a push task too).

The rider may cancel (``trip.cancelled``) at any point: every wait above is a
``ctx.first`` between the next step and the cancellation, and a cancellation runs the
compensations registered so far (``ctx.compensate_with``), newest first: void the payment,
release the driver. They are durable steps calling the services with a stable idempotency
key, so each happens once however often a step is retried or replayed.

Configuration comes from the environment, read when the module is imported (the engine
imports it): ``RIDESHARING_SERVICES`` (the services' base URL, default
``http://127.0.0.1:8471``), ``RIDESHARING_WEBHOOK_SECRET`` (the ``whsec_`` secret the
services verify), ``RIDESHARING_OFFER_SECONDS`` (30), ``RIDESHARING_PICKUP_SECONDS`` (600)
and ``RIDESHARING_RIDE_SECONDS`` (10800). The README's "Ride sharing" section shows how to
run it on SQLite and on Kafka.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

import overture as ov

log = logging.getLogger("examples.ridesharing")

SECRET_ENV = "RIDESHARING_WEBHOOK_SECRET"
"""The variable holding the services' Standard Webhooks secret (``whsec_...``)."""


class TripRequested(ov.Event, type="trip.requested", key="trip_id"):
    trip_id: str
    rider_id: str
    drivers: list[str]
    """The drivers near the pick-up point (a real dispatch would look them up)."""
    estimate_cents: int


class TripPickedUp(ov.Event, type="trip.picked_up", key="trip_id"):
    trip_id: str


class TripDroppedOff(ov.Event, type="trip.dropped_off", key="trip_id"):
    trip_id: str
    fare_cents: int


class TripCancelled(ov.Event, type="trip.cancelled", key="trip_id"):
    trip_id: str


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What the example reads from the environment."""

    services: str = "http://127.0.0.1:8471"
    """The base URL of ``examples/ridesharing_services.py`` (payments and dispatch)."""
    offer_timeout: timedelta = timedelta(seconds=30)
    """How long a driver has to answer an offer."""
    pickup_timeout: timedelta = timedelta(minutes=10)
    """How long the driver has to pick the rider up once assigned."""
    ride_timeout: timedelta = timedelta(hours=3)
    """How long a ride may last before the trip is given up."""

    @classmethod
    def from_env(cls) -> Settings:
        def seconds(name: str, default: timedelta) -> timedelta:
            value = os.environ.get(name)
            return default if value is None else timedelta(seconds=float(value))

        base = cls()
        return cls(
            services=os.environ.get("RIDESHARING_SERVICES", base.services).rstrip("/"),
            offer_timeout=seconds("RIDESHARING_OFFER_SECONDS", base.offer_timeout),
            pickup_timeout=seconds("RIDESHARING_PICKUP_SECONDS", base.pickup_timeout),
            ride_timeout=seconds("RIDESHARING_RIDE_SECONDS", base.ride_timeout),
        )


class RiderCancelled(Exception):
    """The rider's ``trip.cancelled`` came before what the trip was waiting for."""


def post_signed(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST ``payload`` to one of the services, signed as the push tasks are (the services
    verify every request), with the running step's idempotency key in the body and as
    its ``webhook-id``: a retried or replayed compensation sends the same key, and the
    service applies it once.

    Sync, so it runs in the engine's step threads. (An async step opening an
    ``httpx.AsyncClient`` fails on this engine: the executor starts an async step's
    coroutine outside the asyncio task that later resumes it, and anyio's cancel scopes
    refuse to be left in another task than the one they were entered in.)
    """
    step = ov.current_step()
    assert step is not None, "post_signed runs inside a step"
    body = {**payload, "idempotency_key": step.idempotency_key}
    content = json.dumps(body)
    sent = datetime.now(UTC)  # a step may read the clock: its result is what is journaled
    headers = {
        "content-type": "application/json",
        "webhook-id": step.idempotency_key,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": Webhook(os.environ[SECRET_ENV]).sign(
            step.idempotency_key, sent, content
        ),
    }
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        response = client.post(url, content=content, headers=headers)
    response.raise_for_status()  # a failed compensation is retried by its step policy
    answer: dict[str, Any] = response.json()
    return answer


def release_driver(services: str, trip_id: str, driver: str) -> dict[str, Any]:
    """Compensation: tell dispatch the driver is free again."""
    return post_signed(f"{services}/drivers/release", {"trip_id": trip_id, "driver": driver})


def void_payment(services: str, trip_id: str, authorization: str) -> dict[str, Any]:
    """Compensation: void the payment's authorization."""
    return post_signed(
        f"{services}/payments/void", {"trip_id": trip_id, "authorization": authorization}
    )


def make_app(settings: Settings | None = None, *, python_notifier: bool = True) -> ov.App:
    """The ride-sharing app.

    Args:
        settings: where the services are and the trip's timeouts (default: from the
            environment).
        python_notifier: define ``notify.rider`` as a Python task (run by ``overture
            run`` or ``overture worker``). False leaves it to a worker in another
            language serving the ``notify`` queue (``examples/node/kafka-worker.mjs``).
    """
    s = settings if settings is not None else Settings.from_env()
    app = ov.App("rides")
    push = {"secret_env": SECRET_ENV, "queue": "payments", "timeout": timedelta(seconds=10)}
    retry = ov.Retry(max_attempts=5, initial_interval=timedelta(milliseconds=200))
    app.task("payment.authorize", url=f"{s.services}/payments/authorize", retry=retry, **push)
    app.task("payment.capture", url=f"{s.services}/payments/capture", retry=retry, **push)

    if python_notifier:

        @app.task("notify.rider", queue="notify")
        def notify_rider(message: dict[str, Any]) -> dict[str, Any]:
            # A real one would call a push-notification service.
            log.info("to rider %s: %s", message["rider_id"], message["text"])
            return {"rider_id": message["rider_id"], "delivered": True}

    @app.process(
        trigger=TripRequested, waits=[TripPickedUp, TripDroppedOff, TripCancelled], name="trip"
    )
    async def trip(ctx: ov.Context, request: TripRequested) -> dict[str, Any]:
        # Created first, so a cancellation is seen whenever it comes.
        cancelled = ctx.wait_for(TripCancelled)

        async def unless_cancelled(operation: ov.DurableFuture[Any]) -> Any:
            if await ctx.first(cancelled, operation) == 0:
                ctx.abandon(operation)
                raise RiderCancelled
            return await operation

        def notify(text: str) -> ov.DurableFuture[Any]:
            return ctx.call(
                "notify.rider",
                {"rider_id": request.rider_id, "trip_id": request.trip_id, "text": text},
                queue="notify",
                timeout=timedelta(seconds=30),
            )

        try:
            driver = await dispatch(ctx, request, cancelled)
            if driver is None:
                await notify("no driver is available, your trip is cancelled")
                return {"status": "no_driver"}
            ctx.compensate_with(release_driver, s.services, request.trip_id, driver)
            try:
                auth = await unless_cancelled(
                    ctx.call(
                        "payment.authorize",
                        {
                            "trip_id": request.trip_id,
                            "rider_id": request.rider_id,
                            "amount_cents": request.estimate_cents,
                        },
                    )
                )
            except ov.TaskFailed as declined:
                await ctx.compensate()
                await notify(f"your payment was declined: {declined}")
                return {"status": "payment_declined", "driver": driver}
            ctx.compensate_with(void_payment, s.services, request.trip_id, auth["authorization"])
            notified = await unless_cancelled(notify(f"{driver} is on the way"))
            try:
                await unless_cancelled(ctx.wait_for(TripPickedUp, timeout=s.pickup_timeout))
            except ov.WaitTimeout:
                await ctx.compensate()
                return {"status": "driver_no_show", "driver": driver}
            try:
                dropped = await unless_cancelled(
                    ctx.wait_for(TripDroppedOff, timeout=s.ride_timeout)
                )
            except ov.WaitTimeout:
                await ctx.compensate()
                return {"status": "ride_timed_out", "driver": driver}
        except RiderCancelled:
            await ctx.compensate()
            return {"status": "cancelled"}
        ctx.abandon(cancelled)  # dropped off: too late to cancel
        charge = await ctx.call(
            "payment.capture",
            {
                "trip_id": request.trip_id,
                "authorization": auth["authorization"],
                "amount_cents": dropped.fare_cents,
            },
        )
        return {
            "status": "completed",
            "driver": driver,
            "fare_cents": dropped.fare_cents,
            "authorization": auth["authorization"],
            "charge": charge["charge"],
            "notified": notified,
        }

    async def dispatch(
        ctx: ov.Context, request: TripRequested, cancelled: ov.DurableFuture[Any]
    ) -> str | None:
        """Offer the trip to every nearby driver at once: the first to accept gets it."""
        offers = {
            driver: ctx.call(
                "driver.offer",
                {"trip_id": request.trip_id, "driver": driver, "rider_id": request.rider_id},
                queue="drivers",
                timeout=s.offer_timeout,
                retry=ov.Retry(max_attempts=1),  # an unanswered offer is not made again
            )
            for driver in request.drivers
        }
        while offers:
            drivers = list(offers)
            i = await ctx.first(cancelled, *offers.values())
            if i == 0:
                ctx.abandon(*offers.values())
                raise RiderCancelled
            driver = drivers[i - 1]
            try:
                answer = await offers.pop(driver)
            except ov.TaskFailed:  # no answer before the offer's deadline
                continue
            if answer.get("accepted") is True:
                ctx.abandon(*offers.values())
                return driver
        return None

    return app


app = make_app()
"""On any backend: every task but ``driver.offer`` runs in Python (``overture run``)."""

polyglot_app = make_app(python_notifier=False)
"""The rider's notifications left to a worker in another language (the Node.js worker)."""
