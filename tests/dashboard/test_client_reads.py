"""The client reads the dashboard added, sync and async, on SQLite and memory:
``find_instances`` (filters, cursor pages, bad input), ``instance_activity`` and
``instance_counts`` (counted in the store)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from overture import AsyncClient, Client
from overture.backends import open_backend
from overture.errors import ConfigError
from overture.ports import Backend, Batch, InstanceRow

NOW = time.time()
STATUSES = ("completed", "failed", "waiting")


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = (
        f"sqlite:///{tmp_path / 'c.db'}"
        if request.param == "sqlite"
        else f"memory://r-{tmp_path.name}"
    )
    opened = open_backend(url)
    batch = Batch("g")
    for n in range(30):
        # created with sub-microsecond parts: a cursor made from a rounded datetime
        # would skip or repeat rows
        created = NOW - 1800 + n * 60 + 1 / 3 * 1e-7
        batch.instances[f"i{n:02d}"] = InstanceRow(
            f"i{n:02d}",
            "fulfil" if n % 2 else "deliver",
            1,
            f"k{n % 5}",
            STATUSES[n % 3],
            0,
            created,
            created + 30,
            f"t{n}",
        )
    opened.store.commit(batch)  # type: ignore[attr-defined]  (embedded: the engine's store)
    yield opened
    opened.close()


def test_find_instances_pages_newest_first_with_filters(backend: Backend) -> None:
    with Client(backend) as client:
        ids: list[str] = []
        cursor = None
        while True:
            page = client.find_instances(limit=7, cursor=cursor)
            ids.extend(i.id for i in page.instances)
            if page.cursor is None:
                break
            cursor = page.cursor
        assert ids == [f"i{n:02d}" for n in reversed(range(30))]
        waiting = client.find_instances(status="waiting", process="fulfil", limit=50)
        assert [i.id for i in waiting.instances] == ["i29", "i23", "i17", "i11", "i05"]
        assert waiting.cursor is None
        assert [i.id for i in client.find_instances(key="k3", limit=3).instances] == [
            "i28",
            "i23",
            "i18",
        ]
        recent = client.find_instances(
            created_from=datetime.fromtimestamp(NOW - 310, UTC), created_to=datetime.now(UTC)
        )
        assert [i.id for i in recent.instances] == ["i29", "i28", "i27", "i26", "i25"]
        assert [i.id for i in client.find_instances(search="i1").instances] == [
            f"i{n}" for n in range(19, 9, -1)
        ]
        assert len(client.find_instances(search="k4").instances) == 6
        for bad in ("zz", "W10", "WyJhIiwiYiJd"):  # not base64 JSON; []; ["a","b"]
            with pytest.raises(ConfigError, match="invalid cursor"):
                client.find_instances(cursor=bad)
        for limit in (0, -1, True):
            with pytest.raises(ConfigError, match="limit"):
                client.find_instances(limit=limit)


def test_activity_and_counts_come_from_the_store(backend: Backend) -> None:
    with Client(backend) as client:
        since = datetime.fromtimestamp(NOW - 610, UTC)
        rows = client.instance_activity(since=since, width=timedelta(minutes=5))
        assert sum(r.started for r in rows) == 10  # created since (i20 to i29)
        # finished in that time: i21, i24, i27 completed; i22, i25, i28 failed
        assert sum(r.completed for r in rows) == 3 and sum(r.failed for r in rows) == 3
        assert [r.start for r in rows] == sorted(r.start for r in rows)
        with pytest.raises(ConfigError, match="width"):
            client.instance_activity(since=since, width=timedelta(0))
        counts = client.instance_counts()
        assert sum(counts.values()) == 30 and counts[("fulfil", "waiting")] == 5
        assert client.instance_counts(process="deliver") == {
            ("deliver", "completed"): 5,
            ("deliver", "failed"): 5,
            ("deliver", "waiting"): 5,
        }


async def test_the_async_client_answers_the_same(backend: Backend) -> None:
    async with AsyncClient(backend) as client:
        first = await client.find_instances(limit=10)
        second = await client.find_instances(limit=10, cursor=first.cursor)
        assert [i.id for i in first.instances + second.instances] == [
            f"i{n:02d}" for n in range(29, 9, -1)
        ]
        assert (await client.instance_counts()) == client.sync.instance_counts()
        since = datetime.fromtimestamp(NOW - 610, UTC)
        assert await client.instance_activity(since=since) == client.sync.instance_activity(
            since=since
        )
