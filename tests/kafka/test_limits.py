"""Kafka's limits met by a client: an event too large for one Kafka message is refused
with the size and the limit, and nothing of its send is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import overture as ov

from ..conftest import REPO_ROOT, kafka_url

BIG = "x" * 1_200_000  # over the producer's default message.max.bytes (1,000,000)


def test_an_event_over_the_message_limit_is_refused_and_nothing_is_written(
    kafka_bootstrap: str,
) -> None:
    url = kafka_url(kafka_bootstrap)
    with ov.Client(url) as client:
        small = client.envelope("note.added", {"text": "fits"})
        big = client.envelope("note.added", {"text": BIG})
        with pytest.raises(ov.EventError) as caught:
            client.send_many([small, big])  # atomic: the small one is not written either
        message = str(caught.value)
        assert big.id in message
        assert "1,000,000" in message  # the limit
        assert "bytes" in message and "nothing was written" in message
        with pytest.raises(ov.EventError, match="over Kafka's limit"):
            client.send("note.added", {"text": BIG})
        client.send("note.added", {"text": "after"})
        sent = [e.envelope for e in client.events() if e.envelope is not None]
        assert [e.data["text"] for e in sent] == ["after"]


def test_overture_send_says_the_event_is_too_large(kafka_bootstrap: str, tmp_path: Path) -> None:
    data = tmp_path / "big.json"
    data.write_text(json.dumps({"text": BIG}))
    url = kafka_url(kafka_bootstrap)
    command = ["send", "note.added", "--data", f"@{data}", "--backend", url]
    proc = subprocess.run(
        [sys.executable, "-m", "overture.cli", *command],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "over Kafka's limit" in proc.stderr
    assert "Traceback" not in proc.stderr
