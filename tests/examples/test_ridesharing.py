"""``examples/ridesharing.py`` end to end, as its README runs it: the engine (``overture
run``), the services (uvicorn), the drivers script and, on Kafka, the Node.js worker, all
real processes, on SQLite and on Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from ..conftest import REPO_ROOT
from .conftest import Start
from .ridekit import wait_until


def test_the_first_acceptance_wins_and_the_trip_completes_with_the_fare(start: Start) -> None:
    with start() as rides:
        # bob declines (the trip keeps waiting), cy accepts, ann accepts too late
        rides.start_drivers("bob=decline", "cy=accept@0.3", "ann=accept@3")
        rides.request("t1", ["ann", "bob", "cy"])
        rides.waiting_for("t1", "trip.picked_up")
        answers = wait_until(lambda: len(rides.answers()) == 3 and rides.answers(), "3 answers")
        outcomes = [(a["driver"], a["outcome"]) for a in answers]
        # ann's offer was withdrawn when cy won: on SQLite the queue refuses her answer;
        # on Kafka the queue only knows what this process did, so her answer reaches the
        # log (docs/kafka.md) and the engine drops it
        late = "ended" if rides.node_dir is None else "accepted"
        assert outcomes == [("bob", "accepted"), ("cy", "accepted"), ("ann", late)]
        assert rides.effects("t1") == ["authorize"]  # the signed push reached the service
        rides.send("trip.picked_up", trip_id="t1")
        rides.send("trip.dropped_off", trip_id="t1", fare_cents=2310)
        result = rides.result("t1")
        assert result["status"] == "completed"
        assert (result["driver"], result["fare_cents"]) == ("cy", 2310)
        [authorize] = [e for e in rides.ledger() if e["op"] == "authorize"]
        [capture] = [e for e in rides.ledger() if e["op"] == "capture"]
        assert result["authorization"] == authorize["authorization"] == capture["authorization"]
        assert (capture["charge"], capture["amount_cents"]) == (result["charge"], 2310)
        notified = result["notified"]
        assert notified["rider_id"] == "rider-t1" and notified["delivered"] is True
        if rides.node_dir is not None:  # answered by Node: it echoes the idempotency key
            assert notified["notification"].startswith(rides.instance("t1").id)  # type: ignore[union-attr]
        journal = rides.client.journal(result_id(rides, "t1"))
        assert [e for e in journal if e.get("op") == "abandon"]  # ann's offer, at least
        assert "ann" not in str([e for e in journal if e.get("k") == "res"])  # not applied


def result_id(rides: object, trip_id: str) -> str:
    instance = rides.instance(trip_id)  # type: ignore[attr-defined]
    assert instance is not None
    return str(instance.id)


def test_the_services_refuse_an_unsigned_request(start: Start) -> None:
    with start() as rides:
        answer = httpx.post(
            f"{rides.services}/payments/void",
            json={"trip_id": "t9", "authorization": "AUTH-1", "idempotency_key": "k"},
        )
        assert answer.status_code == 401
        assert rides.ledger() == []


def test_a_decline_then_an_acceptance(start: Start) -> None:
    with start() as rides:
        rides.start_drivers("bob=decline", "ann=accept@0.8")
        rides.request("t2", ["ann", "bob"])
        rides.waiting_for("t2", "trip.picked_up")
        assert [(a["driver"], a["outcome"]) for a in rides.answers()] == [
            ("bob", "accepted"),
            ("ann", "accepted"),
        ]
        rides.send("trip.picked_up", trip_id="t2")
        rides.send("trip.dropped_off", trip_id="t2", fare_cents=990)
        result = rides.result("t2")
        assert (result["status"], result["driver"], result["fare_cents"]) == (
            "completed",
            "ann",
            990,
        )


def test_nobody_accepting_in_time_cancels_the_trip(start: Start) -> None:
    with start(offer_seconds=1.5) as rides:
        rides.start_drivers("bob=decline")  # ann never answers
        rides.request("t3", ["ann", "bob"])
        assert rides.result("t3") == {"status": "no_driver"}
        assert rides.effects("t3") == []  # no payment was authorized


def test_a_rider_cancelling_after_the_payment_voids_it_and_releases_the_driver_once(
    start: Start,
) -> None:
    with start() as rides:
        rides.start_drivers("cy=accept")
        rides.request("t4", ["cy"])
        rides.waiting_for("t4", "trip.picked_up")
        assert rides.effects("t4") == ["authorize"]
        rides.send("trip.cancelled", trip_id="t4")
        assert rides.result("t4") == {"status": "cancelled"}
        rides.send("trip.cancelled", trip_id="t4")  # a second cancellation changes nothing
        rides.send("trip.dropped_off", trip_id="t4", fare_cents=100)
        [authorize] = [e for e in rides.ledger() if e["op"] == "authorize"]
        [void] = [e for e in rides.ledger() if e["op"] == "void"]
        [release] = [e for e in rides.ledger() if e["op"] == "release"]
        assert void["authorization"] == authorize["authorization"]
        assert release["driver"] == "cy"
        assert rides.effects("t4") == ["authorize", "release", "void"]


def test_the_trip_survives_an_engine_crash(start: Start) -> None:
    with start() as rides:
        rides.start_drivers("cy=accept")
        rides.request("t5", ["cy"])
        rides.waiting_for("t5", "trip.picked_up")
        rides.kill_engine()
        rides.send("trip.picked_up", trip_id="t5")  # while no engine runs
        rides.start_engine()
        rides.waiting_for("t5", "trip.dropped_off")
        rides.send("trip.dropped_off", trip_id="t5", fare_cents=1500)
        result = rides.result("t5")
        assert (result["status"], result["driver"], result["fare_cents"]) == (
            "completed",
            "cy",
            1500,
        )
        assert rides.effects("t5") == ["authorize", "capture"]  # each once


def test_the_scripts_refuse_bad_command_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RIDESHARING_WEBHOOK_SECRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    url = f"sqlite:///{tmp_path / 'rides.db'}"
    for answer, problem in [
        ("bob=maybe", "expected DRIVER=accept or DRIVER=decline[@SECONDS]"),
        ("bob=accept@soon", "'soon' is not a number of seconds"),
        ("bob=accept@-1", "the delay cannot be negative"),
    ]:
        done = run_module(
            "examples.ridesharing_drivers", "--backend", url, "--answer", answer, env=env
        )
        assert done.returncode == 2 and problem in done.stderr, (answer, done.stderr)
    done = run_module("examples.ridesharing_services", "--port", "0", env=env)
    assert done.returncode == 2
    assert "set RIDESHARING_WEBHOOK_SECRET" in done.stderr
    assert not (tmp_path / "rides.db").exists()  # nothing was opened or written


def run_module(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
