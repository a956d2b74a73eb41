"""Two `overture run` processes on a real Kafka broker: kill -9 one of them mid-run
(three times, alternating), restart the broker mid-run, and check that every instance
completed exactly as it should, every emitted event exists exactly once, and every
effect happened.

A killed member's partitions move to the survivor once its session times out (6 s); the
transaction it left open blocks their readers until it times out (10 s), so the run is
slower than on SQLite, not less exact.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

import overture as ov
from overture.devkafka import start_broker, stop_broker
from overture.errors import BrokerUnavailable

from ..conftest import KAFKA_STATE_DIR, kafka_url
from .app import JobRequested, create_effects
from .test_kill9 import JOBS, assert_all_done, start_engine, wait_for_handlers


def completed(client: ov.Client) -> int:
    try:
        return len(client.instances(process="job", status="completed", limit=10 * JOBS))
    except BrokerUnavailable:
        return -1  # the broker is restarting


def wait_for(
    client: ov.Client,
    target: int,
    engines: list[subprocess.Popen[bytes]],
    log: Path,
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    done = completed(client)
    while done < target and time.monotonic() < deadline:
        for engine in engines:
            assert engine.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
        done = completed(client)
    return done


@pytest.mark.timeout(600)
def test_two_engines_survive_kill_9_and_a_broker_restart(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=4)
    effects = tmp_path / "effects.db"
    log = tmp_path / "engines.log"
    rng = random.Random(4321)
    create_effects(effects)

    with ov.Client(url) as client:
        client.send_many(client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(JOBS // 2))
        engines = [start_engine(url, effects, log, 10_000), start_engine(url, effects, log, 0)]
        kills_mid_run = 0
        try:
            for round_no in range(3):
                if round_no == 1:  # the rest arrives while members die and rejoin
                    client.send_many(
                        client.envelope(JobRequested(job=f"j{i}", n=i))
                        for i in range(JOBS // 2, JOBS)
                    )
                done = wait_for(client, (round_no + 1) * JOBS // 5, engines, log, 120)
                time.sleep(rng.uniform(0.0, 0.3))
                victim = round_no % 2
                engines[victim].send_signal(signal.SIGKILL)
                engines[victim].wait(timeout=10)
                if 0 < done < JOBS:
                    kills_mid_run += 1
                engines[victim] = start_engine(url, effects, log, 0 if round_no % 2 else 10_000)

            # the broker goes away mid-run and comes back on the same port
            done = completed(client)
            assert done < JOBS, "the run ended before the broker restart"
            stop_broker(KAFKA_STATE_DIR)
            time.sleep(2.0)
            start_broker(KAFKA_STATE_DIR, timeout=180)

            done = wait_for(client, JOBS, engines, log, 300)
            assert done == JOBS, f"{done} of {JOBS} completed\n" + log.read_text()[-3000:]
            wait_for_handlers(client, effects, time.monotonic() + 60)
        finally:
            codes = []
            for engine in engines:
                engine.send_signal(signal.SIGTERM)
            for engine in engines:
                try:
                    codes.append(engine.wait(timeout=60))
                except subprocess.TimeoutExpired:
                    engine.send_signal(signal.SIGABRT)  # faulthandler dumps the stacks
                    time.sleep(1)
                    engine.kill()
                    codes.append(-9)
        assert codes == [0, 0], log.read_text()[-3000:]
        assert kills_mid_run >= 2, f"only {kills_mid_run} kills landed mid-run"
        assert_all_done(client, effects)
