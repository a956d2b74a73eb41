"""A zombie engine: one of two `overture run` processes is frozen (SIGSTOP) mid-run long
enough for the group to give its partitions to the other, then thawed (SIGCONT).

The survivor's producers fence the frozen member's; when it wakes up, whatever it was
about to commit must fail rather than land a second time. Every instance must complete
exactly as it should and every emitted event must exist exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

import overture as ov

from ..conftest import kafka_url
from .app import JobRequested, create_effects
from .test_kafka_kill9 import completed, wait_for
from .test_kill9 import JOBS, assert_all_done, start_engine


@pytest.mark.timeout(600)
def test_a_frozen_member_is_fenced_when_it_wakes(tmp_path: Path, kafka_bootstrap: str) -> None:
    url = kafka_url(kafka_bootstrap, partitions=4)
    effects = tmp_path / "effects.db"
    log = tmp_path / "engines.log"
    create_effects(effects)

    with ov.Client(url) as client:
        engines = [start_engine(url, effects, log, 10_000), start_engine(url, effects, log, 0)]
        try:
            time.sleep(3.0)  # both members in the group
            client.send_many(client.envelope(JobRequested(job=f"j{i}", n=i)) for i in range(JOBS))
            done = wait_for(client, JOBS // 5, engines, log, 120)
            assert done < JOBS, "the run ended before the freeze"
            engines[0].send_signal(signal.SIGSTOP)
            # past the session timeout (6 s): the other member takes every partition
            time.sleep(12.0)
            engines[0].send_signal(signal.SIGCONT)
            done = wait_for(client, JOBS, engines, log, 300)
            assert done == JOBS, f"{done} of {JOBS} completed\n" + log.read_text()[-3000:]
            time.sleep(2.0)  # handlers of the last events
        finally:
            for engine in engines:
                engine.send_signal(signal.SIGCONT)
                engine.send_signal(signal.SIGTERM)
            codes = []
            for engine in engines:
                try:
                    codes.append(engine.wait(timeout=60))
                except subprocess.TimeoutExpired:
                    engine.kill()
                    codes.append(-9)
        assert codes == [0, 0], log.read_text()[-3000:]
        assert completed(client) == JOBS
        assert_all_done(client, effects)
