"""``--dlq-retention`` (dead letters deleted by the retention passes, on the engine
clock) and the ids retention deleted, remembered (bounded) so that a client says
"deleted after the retention of 1h" instead of a plain "not found"."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import overture as ov
from overture import retention as kept
from overture.cli import cli
from overture.runtime.options import EngineOptions
from overture.testing import Harness
from tests.conftest import kafka_url

HOUR = 3600.0


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://dlqret" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"


def app() -> ov.App:
    shop = ov.App("shop")

    @shop.process(trigger="order.placed", key=lambda e: e.data["id"])
    async def fulfil(ctx: ov.Context, order: ov.Event) -> str:
        return "done"

    return shop


async def test_dead_letters_are_deleted_after_the_dlq_retention(url: str) -> None:
    options = EngineOptions(retention=None, dlq_retention=timedelta(hours=1))
    async with Harness(app(), url, options=options) as h:
        h.client.send_raw(b"junk 1")
        await h.idle()
        await h.advance(HOUR / 2)
        h.client.send_raw(b"junk 2")
        await h.idle()
        _, second = sorted(h.client.dead_letters(), key=lambda d: d.created)
        await h.advance(HOUR / 2 - 1)  # just before the first one's hour
        assert len(h.client.dead_letters()) == 2
        await h.advance(2)
        assert [d.id for d in h.client.dead_letters()] == [second.id]
        await h.restart()  # the next pass is found again from the store
        await h.advance(HOUR / 2)
        assert h.client.dead_letters() == []
        assert h.engine.stats["dead_letters_expired"] == 1  # since the restart


async def test_dead_letters_are_kept_by_default_even_with_retention_0(url: str) -> None:
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(0))) as h:
        h.client.send_raw(b"junk")
        h.client.send("order.placed", {"id": "a"})
        await h.idle()
        await h.advance(400 * 86_400)
        assert len(h.client.dead_letters()) == 1
        assert h.client.instances() == []  # the instance went at once


@pytest.fixture(params=["memory", "sqlite", "kafka"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "kafka":
        return kafka_url(request.getfixturevalue("kafka_bootstrap"))
    return "memory://dlqret" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"


async def test_a_deleted_id_is_reported_as_deleted_after_the_retention(any_url: str) -> None:
    """On Kafka too: the remembered id is keyed state, in the changelog the clients follow."""
    url = any_url
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(hours=1))) as h:
        h.client.send("order.placed", {"id": "a"})
        await h.idle()
        (instance,) = h.client.instances()
        await h.advance(HOUR + 1)
        with pytest.raises(ov.NotFound) as raised:
            h.client.instance(instance.id)
        assert str(raised.value).startswith(
            f"instance {instance.id!r} not found (deleted after the retention of 1h, at "
        )
        with pytest.raises(ov.NotFound, match=r"^no instance 'never-was'"):
            h.client.instance("never-was")
        if url.startswith("sqlite"):  # the command says it too (exit 1)
            shown = CliRunner().invoke(cli, ["show", instance.id, "--backend", url])
            assert shown.exit_code == 1
            assert "not found (deleted after the retention of 1h" in shown.stderr


def remembered(h: Harness) -> list[str]:
    """The deleted ids the store's pages hold, oldest first."""
    return [iid for page in stored_pages(h) for iid in kept.read_page(page)[2]]


def stored_pages(h: Harness) -> list[bytes]:
    return [v for k, v in h.backend.store.scan(kept.DELETED) if len(k) > 4]  # not counters


def pages(h: Harness) -> int:
    return len(stored_pages(h))


async def test_the_deleted_ids_kept_are_bounded_in_number(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kept, "DELETED_KEPT", 3)
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(hours=1))) as h:
        for n in range(7):
            h.client.send("order.placed", {"id": f"o{n}"})
        await h.idle()
        ids = {i.id for i in h.client.instances()}
        await h.advance(HOUR + 1)  # one pass deletes all seven
        assert h.client.instances() == []
        kept_ids = set(remembered(h))
        assert len(kept_ids) == 3 and kept_ids <= ids
        for iid in ids:
            with pytest.raises(ov.NotFound) as raised:
                h.client.instance(iid)
            assert ("deleted after the retention of 1h" in str(raised.value)) == (iid in kept_ids)


async def test_past_the_bound_the_oldest_deleted_ids_go_first(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two passes of two: the first pass's page loses its oldest id, not the page."""
    monkeypatch.setattr(kept, "DELETED_KEPT", 3)
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(hours=1))) as h:
        for n in range(2):
            h.client.send("order.placed", {"id": f"first{n}"})
        await h.idle()
        await h.advance(10)
        for n in range(2):
            h.client.send("order.placed", {"id": f"second{n}"})
        await h.idle()
        first, second = (
            [i.id for i in h.client.instances() if (i.key or "").startswith(name)]
            for name in ("first", "second")
        )
        await h.advance(HOUR - 5)  # the first two are deleted
        page = remembered(h)  # in the order of their deletion
        assert sorted(page) == sorted(first)
        await h.advance(10)  # and the second two: the oldest of the first goes
        kept_ids = remembered(h)
        assert kept_ids[0] == page[1]  # the oldest deleted went, the page was kept
        assert sorted(kept_ids[1:]) == sorted(second)
        assert pages(h) == 2


async def test_a_pass_deleting_more_than_a_page_of_ids_writes_several(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kept, "DELETED_PAGE", 2)
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(hours=1))) as h:
        for n in range(5):
            h.client.send("order.placed", {"id": f"o{n}"})
        await h.idle()
        ids = {i.id for i in h.client.instances()}
        await h.advance(HOUR + 1)
        assert sorted(remembered(h)) == sorted(ids) and pages(h) == 3
        for iid in ids:
            with pytest.raises(ov.NotFound, match="deleted after the retention of 1h"):
                h.client.instance(iid)
        await h.advance(HOUR)  # all three pages go together
        assert remembered(h) == [] and pages(h) == 0


async def test_the_deleted_ids_are_dropped_a_retention_after_their_deletion(url: str) -> None:
    async with Harness(app(), url, options=EngineOptions(retention=timedelta(hours=1))) as h:
        h.client.send("order.placed", {"id": "a"})
        await h.idle()
        (instance,) = h.client.instances()
        await h.advance(HOUR + 1)  # deleted, remembered
        assert remembered(h) == [instance.id]
        await h.restart()  # when the page is due is found again from the store
        await h.advance(HOUR - 2)
        assert remembered(h) == [instance.id]
        await h.advance(3)  # a retention after the deletion: forgotten, with no other work
        assert remembered(h) == []
        assert [k for k, _ in h.backend.store.scan(kept.DELETED)] == [bytes(4)]  # the counter
        with pytest.raises(ov.NotFound, match=r"^no instance"):
            h.client.instance(instance.id)


def test_an_id_deleted_twice_is_reported_with_its_last_deletion() -> None:
    """An instance id can come back (a trigger sent again after its instance was
    deleted); every engine's pages are searched and the newest deletion wins."""
    entries = [
        (bytes(4), kept.counter(2, 0, 2)),
        (bytes(4) + bytes(8), kept.deleted_page(100.0, 60.0, ["x", "y"])),
        (bytes(4) + (1).to_bytes(8, "big"), kept.deleted_page(300.0, 3600.0, ["x"])),
        ((1).to_bytes(4, "big") + bytes(8), kept.deleted_page(200.0, 60.0, ['x"y', "x"])),
    ]
    assert kept.find_deleted(entries, "x") == (300.0, timedelta(hours=1))
    assert kept.find_deleted(entries, "y") == (100.0, timedelta(minutes=1))
    assert kept.find_deleted(entries, 'x"y') == (200.0, timedelta(minutes=1))
    assert kept.find_deleted(entries, "z") is None
    assert kept.find_deleted(entries, '"x"') is None  # (a substring of a page is not an id)
