"""Retention on a real Kafka broker: the topics Overture creates get a ``retention.ms``
derived from the retention, existing topics that differ are reported (``overture run``'s
log, ``overture topics``) and left as they are, and a restore after retention (and the
broker's compaction) reads fewer changelog records than before it."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from typer.testing import CliRunner

from overture.backends.kafka.backend import KafkaBackend
from overture.backends.kafka.reading import read_changelog, reader
from overture.backends.kafka.settings import KafkaSettings, parse
from overture.backends.kafka.topics import CHANGELOG_CONFIG, log_retention_ms
from overture.cli import cli
from overture.protocol import Status
from overture.retention import describe_retention
from overture.testing import Harness

from ..conftest import kafka_url
from ..engine_process import overture_run, stop
from .test_engine_retention import OrderPlaced, PaymentReceived, shop

DAY_MS = 86_400_000


def test_the_events_topics_keep_records_at_least_a_week_and_forever_for_forever() -> None:
    assert log_retention_ms(None) == -1
    assert log_retention_ms(timedelta(0)) == 7 * DAY_MS  # consumers away must still find them
    assert log_retention_ms(timedelta(minutes=1)) == 7 * DAY_MS
    assert log_retention_ms(timedelta(days=7)) == 7 * DAY_MS
    assert log_retention_ms(timedelta(days=30)) == 30 * DAY_MS
    assert log_retention_ms(timedelta(days=7, milliseconds=1)) == 7 * DAY_MS + 1


def _configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    admin = AdminClient(settings.config())
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result(15).items()}


@pytest.mark.parametrize(
    ("retention", "wanted"),
    [(timedelta(days=30), str(30 * DAY_MS)), (None, "-1"), (timedelta(0), str(7 * DAY_MS))],
    ids=["30d", "forever", "0"],
)
def test_new_topics_are_created_with_the_retention_derived_from_it(
    kafka_bootstrap: str, retention: timedelta | None, wanted: str
) -> None:
    backend = KafkaBackend(kafka_url(kafka_bootstrap), retention=retention)
    try:
        backend.tasks.claim(["mail"], "w1", 1, 1.0)  # creates the queue's topic
        settings = backend.settings
        ns = settings.namespace
        for topic in (settings.events_topic, settings.internal_topic, f"{ns}.tasks.mail"):
            configs = _configs(settings, topic)
            assert configs["cleanup.policy"] == "delete", topic
            assert configs["retention.ms"] == wanted, topic
        changelog = _configs(settings, settings.changelog_topic)
        assert changelog["cleanup.policy"] == "compact"
        result = CliRunner().invoke(
            cli, ["topics", "--backend", backend.url, "--retention", describe_retention(retention)]
        )
        assert result.exit_code == 0, result.output
        assert f"{ns}.tasks.mail" in result.stdout and "no:" not in result.stdout
    finally:
        backend.close()


def _create(settings: KafkaSettings, configs: dict[str, dict[str, str]], partitions: int) -> None:
    admin = AdminClient(settings.config())
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        for name, config in configs.items()
    ]
    for future in admin.create_topics(new).values():
        future.result(30)


def test_existing_topics_that_differ_are_reported_by_overture_run_and_left_alone(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = kafka_url(kafka_bootstrap, partitions=1)
    settings = parse(url)
    _create(
        settings,
        {
            settings.events_topic: {"retention.ms": "3600000"},  # an hour: shorter than 7d
            settings.internal_topic: {},  # the broker's default, 7 days: as Overture's
            settings.changelog_topic: {"cleanup.policy": "compact,delete"},
        },
        1,
    )
    log = tmp_path / "engine.log"
    engine = overture_run("tests.retention.crash_app:app", url, log, "--retention", "7d")
    assert stop(engine, log) == 0, log.read_text()
    text = log.read_text()
    events = (
        f"topic {settings.events_topic} has retention.ms=3600000 but Overture creates it "
        f"with retention.ms={7 * DAY_MS}: records are deleted after 1h, but --retention 7d "
        "keeps them 7d"
    )
    assert events in text
    changelog = (
        f"topic {settings.changelog_topic} has cleanup.policy=compact,delete but Overture "
        "creates it with cleanup.policy=compact: the changelog holds live state"
    )
    assert changelog in text
    assert f"--entity-name {settings.events_topic} --add-config retention.ms={7 * DAY_MS}" in text
    assert settings.internal_topic not in text  # as Overture would create it: not reported
    assert len(re.findall(r"WARNING +overture\.kafka: topic ", text)) == 2, text
    # reported, not changed
    assert _configs(settings, settings.events_topic)["retention.ms"] == "3600000"
    assert _configs(settings, settings.changelog_topic)["cleanup.policy"] == "compact,delete"

    result = CliRunner().invoke(cli, ["topics", "--backend", url])
    assert result.exit_code == 1
    assert events in result.stderr and changelog in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 topic config(s) differ from what Overture creates for --retention 7d "
        "(see the warnings above)"
    )
    assert f"no: retention.ms={7 * DAY_MS}" in result.stdout
    forever = CliRunner().invoke(cli, ["topics", "--backend", url, "--retention", "forever"])
    assert forever.exit_code == 1
    assert "has retention.ms=3600000 but Overture creates it with retention.ms=-1" in (
        forever.stderr
    )
    assert f"{settings.internal_topic} has retention.ms={7 * DAY_MS}" in forever.stderr


def test_overture_topics_refuses_an_embedded_backend(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["topics", "--backend", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2
    assert "overture topics is for kafka:// backends" in result.stderr
    bad = CliRunner().invoke(cli, ["topics", "--backend", "kafka://h:1/x", "--retention", "soon"])
    assert bad.exit_code == 2 and "is not a retention" in bad.stderr


# -- a restore after retention -----------------------------------------------------------------


COMPACT_SOON = {
    "segment.ms": "2000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "500",
    "min.compaction.lag.ms": "0",
}
"""A changelog the broker's cleaner compacts within seconds: segments roll after 2 s of
traffic, any dirt makes a log cleanable, tombstones are dropped half a second after the
pass that cleaned them."""

RESTORED = re.compile(r"restored partitions \[[\d, ]+\] from (\d+) changelog records")


def _restored(caplog: pytest.LogCaptureFixture) -> int:
    """The records the last restore on assignment read (its log line)."""
    counts = [int(m.group(1)) for r in caplog.records if (m := RESTORED.search(r.getMessage()))]
    assert counts, "no restore was logged"
    return counts[-1]


def _changelog_records(settings: KafkaSettings, partitions: int) -> int:
    consumer = reader(settings, "test-count")
    try:
        read = read_changelog(
            consumer, settings.changelog_topic, dict.fromkeys(range(partitions), 0)
        )
    finally:
        consumer.close()
    return sum(len(records) for records in read.values())


@pytest.mark.timeout(300)
async def test_a_restore_after_retention_reads_fewer_changelog_records(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overture.kafka")
    url = kafka_url(kafka_bootstrap, partitions=2)
    settings = parse(url)
    _create(
        settings,
        {
            settings.events_topic: {"retention.ms": str(7 * DAY_MS)},
            settings.internal_topic: {"retention.ms": str(7 * DAY_MS)},
            settings.changelog_topic: {**CHANGELOG_CONFIG, **COMPACT_SOON},
        },
        2,
    )
    # Enough finished instances that what compaction cannot remove yet (the uncleanable
    # active segments, the trickle's own rows, tombstones and deleted-id entries, about ten
    # records per trickle instance) stays far below half of what the first restore read.
    done = [f"o{i}" for i in range(300)]
    live = [f"slow{i}" for i in range(5)]
    async with Harness(shop(), url, retention=timedelta(hours=1)) as h:
        for key in done + live:
            h.client.send(OrderPlaced(order_id=key))
        await h.idle()
        finished = h.client.instances(status=Status.COMPLETED)
        assert len(finished) == len(done)
        await h.restart()  # a restore on assignment, before retention
        before = _restored(caplog)
        assert before >= 2 * len(done + live)  # at least a row and a journal chunk each

        await h.advance(2 * 3600)  # past the retention: the 300 finished ones are deleted
        assert sum(e.stats["expired"] for e in h.host.engines.values()) == len(done)
        # Live traffic rolls the changelog's segments, so the broker's cleaner compacts
        # them; each trickle instance is deleted by the next advance.
        deadline = time.monotonic() + 150
        trickle = 0
        while _changelog_records(settings, 2) >= before / 2:
            assert time.monotonic() < deadline, "the broker's cleaner did not compact in 150 s"
            h.client.send(OrderPlaced(order_id=f"t{trickle}"))
            trickle += 1
            await h.advance(2 * 3600)
            await asyncio.sleep(1.0)
        await h.restart()
        after = _restored(caplog)
        assert after < before / 2, (before, after)
        # What is left is the live state: the waiting instances, with their waits. (Read
        # by a new reader: this harness's client read the changelog before the tombstones
        # were written, and they were compacted away 0.5 s later, delete.retention.ms,
        # before it read again: a reader must come back within delete.retention.ms.)
        fresh = KafkaBackend(url)
        try:
            store = fresh.store
            assert _statuses(fresh) == dict.fromkeys(live, Status.WAITING)
            assert all(store.instance(i.id) is None for i in finished)
            assert {w.key for w in store.waits()} == set(live)
            for key in live:  # and they still work
                h.client.send(PaymentReceived(order_id=key, amount=1))
            await h.idle()
            deadline = time.monotonic() + 15  # readers see a commit once its markers are
            while _statuses(fresh) != dict.fromkeys(live, Status.COMPLETED):
                assert time.monotonic() < deadline, _statuses(fresh)
                await asyncio.sleep(0.2)
        finally:
            fresh.close()


def _statuses(backend: KafkaBackend) -> dict[str, str]:
    """The status of each instance but the trickle's, by key."""
    return {r.key: r.status for r in backend.store.instances() if not r.key.startswith("t")}
