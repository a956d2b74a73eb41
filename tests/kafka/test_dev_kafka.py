"""``overture dev kafka`` against a real broker: no mocks.

The lifecycle test drives the command line in subprocesses (as a user would; the broker
outlives the ``start`` command) on its own state directory, so that stopping it never
disturbs the session's shared broker (``kafka_bootstrap``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from ..conftest import REPO_ROOT

CLI_STATE_DIR = REPO_ROOT / ".overture" / "test-kafka-cli"
"""The lifecycle test's broker (kept between runs, stopped at the end of the test)."""
ADDRESS = re.compile(r"127\.0\.0\.1:\d+")


def overture(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``overture ARGS`` in a subprocess (``python -m overture.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "overture.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )


def kafka(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``overture dev kafka COMMAND --state-dir <the lifecycle test's dir> ARGS``."""
    return overture("dev", "kafka", command, "--state-dir", str(CLI_STATE_DIR), *args)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; an exited broker may linger as a zombie until init reaps it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cli_start_status_restart_stop() -> None:
    started = kafka("start", "--timeout", "180")
    assert started.returncode == 0, started.stderr
    address = started.stdout.strip().splitlines()[-1]
    assert ADDRESS.fullmatch(address), started.stdout
    assert "Traceback" not in started.stderr
    record = json.loads((CLI_STATE_DIR / "broker.json").read_text())
    try:
        assert record["port"] == int(address.rsplit(":", 1)[1])
        assert pid_alive(record["pid"])  # it outlived the `start` command

        status = kafka("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.startswith("running"), status.stdout
        assert address in status.stdout
        assert f"pid {record['pid']}" in status.stdout

        again = kafka("start")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == address
        assert "already runs" in again.stderr
        assert json.loads((CLI_STATE_DIR / "broker.json").read_text())["pid"] == record["pid"]
    finally:
        stopped = kafka("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {record['pid']}" in stopped.stdout
    assert not pid_alive(record["pid"])
    assert not (CLI_STATE_DIR / "broker.json").exists()

    status = kafka("status")
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stdout.startswith("not running"), status.stdout


def test_transactional_produce_then_read_committed(kafka_bootstrap: str) -> None:
    assert ADDRESS.fullmatch(kafka_bootstrap)
    topic = f"dev-kafka-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    try:
        producer = Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "enable.idempotence": True,
                "transactional.id": f"dev-kafka-test-{uuid.uuid4().hex[:8]}",
            }
        )
        producer.init_transactions(60)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"aborted")
        producer.abort_transaction(30)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"committed")
        producer.commit_transaction(30)

        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"dev-kafka-test-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            values = []
            deadline = time.monotonic() + 30
            while b"committed" not in values and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    raise KafkaException(message.error())
                values.append(message.value())
        finally:
            consumer.close()
        assert values == [b"committed"]  # the aborted record is never delivered
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


def test_missing_java_is_reported_clearly(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    env.pop("OVERTURE_KAFKA_DIR", None)

    result = overture("dev", "kafka", "start", "--state-dir", str(tmp_path / "kafka"), env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert "needs java (a Java 17+ runtime) and mvn" in lines[0]
    assert "not on PATH" in lines[0]
    assert "apt-get install openjdk-17-jre-headless maven" in lines[0]
