"""Cold chain: refrigerated containers report their temperature; the engine watches them.

- ``overheating``: a 5-minute hopping window (every minute) per container averages its
  readings; a window whose mean is above :data:`THRESHOLD_C` (with at least
  :data:`MIN_READINGS` readings, so one bad sample is not an alarm) emits
  ``container.overheated``.
- ``shipment``: one process per shipment (keyed by its container), started by
  ``shipment.departed``. The first ``container.overheated`` of its container reroutes the
  shipment to the nearest cold store (a durable step), emits ``shipment.rerouted`` and
  ``maintenance.requested`` (the maintenance team's handler pages them), then the
  process waits for the delivery. A shipment delivered without overheating completes
  as ``delivered``.
- ``silent``: a container whose sensor sends no reading for :data:`SILENCE` raises
  ``sensor.silent`` (an absence pattern). It fires because time passes, not because an
  event arrives: once the partition is idle its watermark follows the engine clock
  (docs/streams.md, "Idle partitions"), so the last sensor to fall silent is reported too.

Event time is each reading's ``at`` (the sensor's clock), with 10 seconds of grace for
readings that arrive out of order.

Run it, on a fresh SQLite file, with a real ``overture run`` (the demo sends the last
ten minutes of three containers' trips and prints what the engine did)::

    python -m examples.coldchain

or run the engine yourself: ``overture run examples.coldchain:app``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

import overture as ov

from . import streamdemo

log = logging.getLogger("examples.coldchain")

THRESHOLD_C = 8.0
"""The warmest a window's mean may be (pharmaceuticals: 2 to 8 degrees Celsius)."""
MIN_READINGS = 3
"""Fewer readings than this in a window never raise an alarm."""
SILENCE = timedelta(minutes=2)
"""A sensor quiet for this long is reported."""
GRACE = timedelta(seconds=10)

COLD_STORES = {
    "Rotterdam": "Rotterdam Maasvlakte cold store",
    "Antwerp": "Antwerp Churchill dock reefer yard",
    "Hamburg": "Hamburg Altenwerder cold hub",
}
"""The nearest certified cold store of each route point (a real one asks a routing
service)."""


def _now() -> datetime:
    return datetime.now(UTC)


class TemperatureRead(ov.Event, type="temperature.read", key="container_id"):
    container_id: str
    celsius: float
    location: str
    at: datetime = Field(default_factory=_now)


class ShipmentDeparted(ov.Event, type="shipment.departed", key="container_id"):
    container_id: str
    shipment_id: str
    destination: str


class ShipmentDelivered(ov.Event, type="shipment.delivered", key="container_id"):
    container_id: str
    shipment_id: str


class ContainerOverheated(ov.Event, type="container.overheated", key="container_id"):
    container_id: str
    mean_celsius: float
    readings: int
    location: str
    window_start: datetime
    window_end: datetime


class ShipmentRerouted(ov.Event, type="shipment.rerouted", key="container_id"):
    container_id: str
    shipment_id: str
    cold_store: str
    mean_celsius: float


class MaintenanceRequested(ov.Event, type="maintenance.requested", key="container_id"):
    container_id: str
    reason: str


class SensorSilent(ov.Event, type="sensor.silent", key="container_id"):
    container_id: str
    last_reading: datetime
    location: str


app = ov.App("coldchain")


@app.window(
    source=TemperatureRead,
    key="container_id",
    window=ov.Hopping(timedelta(minutes=5), timedelta(minutes=1)),
    aggregate={
        "mean": ov.Mean("celsius"),
        "readings": ov.Count(),
        "location": ov.Last("location"),  # where the container was at the window's end
    },
    grace=GRACE,
    time_field="at",
)
def overheating(result: ov.WindowResult) -> ContainerOverheated | None:
    mean, readings = result.values["mean"], result.values["readings"]
    if readings < MIN_READINGS or mean <= THRESHOLD_C:
        return None
    return ContainerOverheated(
        container_id=result.key,
        mean_celsius=round(mean, 2),
        readings=readings,
        location=result.values["location"],
        window_start=result.start,
        window_end=result.end,
    )


@app.pattern(
    ov.begin(TemperatureRead).not_followed_by(TemperatureRead).within(SILENCE),
    key="container_id",
    grace=GRACE,
    time_field="at",
)
def silent(match: ov.Match) -> SensorSilent:
    last = match["temperature.read"][0]
    assert isinstance(last, TemperatureRead)
    return SensorSilent(container_id=match.key, last_reading=last.at, location=last.location)


def reroute(shipment_id: str, location: str) -> str:
    """Book the nearest cold store for the shipment (a real one calls the carrier's API
    with ``ctx.idempotency_key``); returns its name."""
    store = COLD_STORES.get(location, f"nearest certified cold store to {location}")
    log.info("shipment %s rerouted to %s", shipment_id, store)
    return store


@app.process(
    trigger=ShipmentDeparted,
    waits=[ContainerOverheated, ShipmentDelivered],
    emits=[ShipmentRerouted, MaintenanceRequested],
)
async def shipment(ctx: ov.Context, departed: ShipmentDeparted) -> dict[str, Any]:
    overheated = ctx.wait_for(ContainerOverheated)
    delivered = ctx.wait_for(ShipmentDelivered)
    if await ctx.first(overheated, delivered) == 1:
        ctx.abandon(overheated)
        return {"status": "delivered", "destination": departed.destination}
    hot = await overheated
    store = await ctx.step(reroute, departed.shipment_id, hot.location)
    ctx.emit(
        ShipmentRerouted(
            container_id=departed.container_id,
            shipment_id=departed.shipment_id,
            cold_store=store,
            mean_celsius=hot.mean_celsius,
        )
    )
    ctx.emit(
        MaintenanceRequested(
            container_id=departed.container_id,
            reason=f"mean {hot.mean_celsius} C over {hot.readings} readings "
            f"from {hot.window_start:%H:%M} to {hot.window_end:%H:%M} near {hot.location}",
        )
    )
    await delivered
    return {"status": "rerouted", "cold_store": store, "mean_celsius": hot.mean_celsius}


@app.on(MaintenanceRequested)
async def page_maintenance(event: MaintenanceRequested) -> None:
    # A real one pages the on-call reefer technician.
    log.warning("maintenance: container %s: %s", event.container_id, event.reason)


@app.on(SensorSilent)
async def report_silence(event: SensorSilent) -> None:
    log.warning(
        "sensor of container %s silent since %s near %s",
        event.container_id,
        f"{event.last_reading:%H:%M:%S}",
        event.location,
    )


# -- the demo: python -m examples.coldchain ------------------------------------------------


def readings(now: datetime) -> list[TemperatureRead]:
    """The last ten minutes of three containers, every 20 seconds, in time order:
    ``C-1`` warms up from 6 minutes ago (its door seal failed), ``C-2`` stays cold,
    ``C-3``'s sensor stops 5 minutes ago."""
    out = []
    for s in range(600, 0, -20):
        at = streamdemo.ago(s, now)
        warm = max(0.0, (360 - s) / 20)  # degrees above normal once the seal failed
        out.append(TemperatureRead(container_id="C-1", celsius=5 + warm, location="Antwerp", at=at))
        out.append(TemperatureRead(container_id="C-2", celsius=4.5, location="Rotterdam", at=at))
        if s > 300:
            out.append(TemperatureRead(container_id="C-3", celsius=5, location="Hamburg", at=at))
    return out


def scenario(client: ov.Client) -> None:
    for container, shipment_id in [("C-1", "S-100"), ("C-2", "S-200"), ("C-3", "S-300")]:
        client.send(
            ShipmentDeparted(container_id=container, shipment_id=shipment_id, destination="Basel")
        )
    client.send_many(r.envelope for r in readings(datetime.now(UTC)))


def rerouted(client: ov.Client) -> bool:
    return bool(streamdemo.emitted(client, ShipmentRerouted))


def main(argv: list[str] | None = None) -> None:
    db = streamdemo.parse_args("The cold chain example, end to end.", argv)

    def deliver(client: ov.Client) -> None:
        scenario(client)
        streamdemo.wait_for(client, rerouted)
        for container, shipment_id in [("C-1", "S-100"), ("C-2", "S-200")]:
            client.send(ShipmentDelivered(container_id=container, shipment_id=shipment_id))

    def done(client: ov.Client) -> bool:
        finished = [i for i in client.instances(process="shipment") if i.status == "completed"]
        return len(finished) == 2 and bool(streamdemo.emitted(client, SensorSilent))

    streamdemo.run("examples.coldchain:app", app, db, deliver, done)
    with ov.Client(f"sqlite:///{db}", app=app) as client:
        for i in client.instances(process="shipment"):
            print(f"shipment of {i.key}: {i.status} {i.result or ''}")
        for e in streamdemo.emitted(client, ContainerOverheated)[:1]:
            assert isinstance(e, ContainerOverheated)
            print(f"first overheated window of {e.container_id}: mean {e.mean_celsius} C")
        for e in streamdemo.emitted(client, SensorSilent):
            assert isinstance(e, SensorSilent)
            print(f"sensor.silent: {e.container_id}, last reading {e.last_reading:%H:%M:%S}")
    print(f"database: {db}")


if __name__ == "__main__":
    main()
