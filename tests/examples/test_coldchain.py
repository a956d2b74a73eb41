"""``examples/coldchain.py``: the hopping mean against a plain-Python reference, the
shipment rerouted once with maintenance paged, the silent sensor reported by the
idle-partition rule alone (no further event), on every backend; and its README command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import overture as ov
from examples import coldchain as cc

from ..test_examples import Factory
from .streamkit import T0, at, emitted, run_demo

GRACE = cc.GRACE.total_seconds()
IDLE = GRACE  # the default idle timeout: the grace (at least one second)


def trip() -> list[cc.TemperatureRead]:
    """Ten minutes, a reading every 20 s: C-1 warms by a degree every 20 s from 240 s on;
    C-2 stays at 4.5 but for one 30-degree spike (a sensor glitch, not an alarm); C-9
    sends two warm readings, then nothing (too few for an alarm)."""
    out = [
        cc.TemperatureRead(container_id="C-9", celsius=12.0, location="Hamburg", at=at(s))
        for s in (0, 20)
    ]
    for s in range(0, 600, 20):
        c1 = 5.0 if s < 240 else 5.0 + (s - 220) / 20
        c2 = 30.0 if s == 300 else 4.5
        out.append(cc.TemperatureRead(container_id="C-1", celsius=c1, location="Antwerp", at=at(s)))
        out.append(
            cc.TemperatureRead(container_id="C-2", celsius=c2, location="Rotterdam", at=at(s))
        )
    return out


def hot_windows(readings: list[cc.TemperatureRead]) -> list[tuple[Any, ...]]:
    """The reference: every 5-minute window starting on a whole minute, its mean, hot
    when above the threshold with enough readings; in closing order (by end)."""
    size, every = 300, 60
    out = []
    for container in sorted({r.container_id for r in readings}):
        times = [
            (r.at.timestamp() - T0, r.celsius) for r in readings if r.container_id == container
        ]
        first, last = min(t for t, _ in times), max(t for t, _ in times)
        for start in range(int(first // every) * every - size + every, int(last) + 1, every):
            inside = [c for t, c in times if start <= t < start + size]
            mean = sum(inside) / len(inside) if inside else 0.0
            if len(inside) >= cc.MIN_READINGS and mean > cc.THRESHOLD_C:
                out.append((container, start, start + size, round(mean, 2), len(inside)))
    return sorted(out, key=lambda w: (w[2], w[0]))


async def test_a_warming_container_is_rerouted_once_and_maintenance_paged(
    harness: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=cc.log.name)
    readings = trip()
    expected = hot_windows(readings)
    assert expected and {w[0] for w in expected} == {"C-1"}  # C-2's spike, C-9: no alarm
    async with harness(cc.app) as h:
        for container, shipment in [("C-1", "S-1"), ("C-2", "S-2")]:
            h.client.send(
                cc.ShipmentDeparted(
                    container_id=container, shipment_id=shipment, destination="Basel"
                )
            )
        h.client.send_many(r.envelope for r in readings)
        await h.idle()
        await h.advance(600 + 300 + IDLE + GRACE)  # the clock closes the last windows

        hot = emitted(h.client, cc.ContainerOverheated)
        got = [
            (
                e.container_id,
                e.window_start.timestamp() - T0,
                e.window_end.timestamp() - T0,
                e.mean_celsius,
                e.readings,
            )
            for e in hot
            if isinstance(e, cc.ContainerOverheated)
        ]
        assert sorted(got, key=lambda w: (w[2], w[0])) == expected
        [rerouted] = emitted(h.client, cc.ShipmentRerouted)
        assert isinstance(rerouted, cc.ShipmentRerouted)
        first_hot = expected[0]
        assert (rerouted.container_id, rerouted.shipment_id) == ("C-1", "S-1")
        assert rerouted.cold_store == cc.COLD_STORES["Antwerp"]
        assert rerouted.mean_celsius == first_hot[3]
        [maintenance] = emitted(h.client, cc.MaintenanceRequested)
        assert isinstance(maintenance, cc.MaintenanceRequested)
        assert maintenance.container_id == "C-1" and f"mean {first_hot[3]} C" in maintenance.reason
        status = {i.key: i.status for i in h.client.instances(process="shipment")}
        assert status == {"C-1": "waiting", "C-2": "waiting"}  # both await delivery

        for container, shipment in [("C-1", "S-1"), ("C-2", "S-2")]:
            h.client.send(cc.ShipmentDelivered(container_id=container, shipment_id=shipment))
        await h.idle()
        results = {i.key: i.result for i in h.client.instances(process="shipment")}
        assert results == {
            "C-1": {
                "status": "rerouted",
                "cold_store": cc.COLD_STORES["Antwerp"],
                "mean_celsius": first_hot[3],
            },
            "C-2": {"status": "delivered", "destination": "Basel"},
        }
        assert h.client.dead_letters() == []
    assert any("maintenance: container C-1" in m for m in caplog.messages)


async def test_a_sensor_that_falls_silent_is_reported_with_no_further_event(
    harness: Factory,
) -> None:
    async with harness(cc.app) as h:
        for s in range(0, 120, 20):  # the last reading at 100 s, then nothing at all
            h.client.send(
                cc.TemperatureRead(container_id="C-3", celsius=5.0, location="Hamburg", at=at(s))
            )
        await h.idle()
        deadline = 100 + cc.SILENCE.total_seconds()  # the watermark must reach it
        # the clock's watermark is now - idle - grace: one second short of the deadline
        await h.advance(deadline + IDLE + GRACE - 1)
        assert emitted(h.client, cc.SensorSilent) == []
        await h.advance(1)
        [silent] = emitted(h.client, cc.SensorSilent)
        assert isinstance(silent, cc.SensorSilent)
        assert (silent.container_id, silent.location) == ("C-3", "Hamburg")
        assert silent.last_reading == at(100)
        await h.advance(3600)
        assert len(emitted(h.client, cc.SensorSilent)) == 1  # once


async def test_a_sensor_reporting_every_20_seconds_is_never_silent(harness: Factory) -> None:
    async with harness(cc.app) as h:
        for s in range(0, 400, 20):
            h.client.send(
                cc.TemperatureRead(container_id="C-4", celsius=5.0, location="Hamburg", at=at(s))
            )
            await h.advance(20)  # the clock keeps pace with the readings
        assert emitted(h.client, cc.SensorSilent) == []


def test_the_readme_command(tmp_path: Path) -> None:
    db = tmp_path / "coldchain.db"
    out = run_demo("coldchain", db)
    assert "shipment of C-1: completed {'status': 'rerouted', 'cold_store': " in out
    assert "shipment of C-2: completed {'status': 'delivered'" in out
    assert "shipment of C-3: waiting" in out
    assert "sensor.silent: C-3" in out and "sensor.silent: C-1" not in out
    with ov.Client(f"sqlite:///{db}", app=cc.app) as client:
        [rerouted] = emitted(client, cc.ShipmentRerouted)
        assert isinstance(rerouted, cc.ShipmentRerouted)
        assert rerouted.container_id == "C-1" and rerouted.mean_celsius > cc.THRESHOLD_C
        assert len(emitted(client, cc.MaintenanceRequested)) == 1
        assert [e.container_id for e in emitted(client, cc.SensorSilent)] == ["C-3"]  # type: ignore[attr-defined]
        assert client.dead_letters() == []
