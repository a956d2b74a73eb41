"""Quick sync steps fold into the batch that started them (``Engine(sync_fold=...)``):
an instance of three plain ``def`` steps completes in one commit, as with async steps,
while a slow sync step still gets its durable work row with the batch that started it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import overture as ov
from overture.backends import open_backend
from overture.backends.sqlite import SqliteBackend
from overture.ports import Batch
from overture.runtime.engine import Engine


class Job(ov.Event, type="job.queued", key="job_id"):
    job_id: str
    slow: bool = False


def three_steps_app(release: threading.Event) -> ov.App:
    app = ov.App("fold")

    def reserve(job_id: str) -> str:
        return f"r-{job_id}"

    def charge(job_id: str, slow: bool) -> str:
        if slow:  # a call to a service that answers late
            release.wait(30)
        return f"c-{job_id}"

    def ship(job_id: str) -> str:
        return f"s-{job_id}"

    @app.process(trigger=Job, key="job_id")
    async def run_job(ctx: ov.Context, job: Job) -> list[str]:
        first: str = await ctx.step(reserve, job.job_id)
        second: str = await ctx.step(charge, job.job_id, job.slow)
        third: str = await ctx.step(ship, job.job_id)
        return [first, second, third]

    return app


def recording(broker: SqliteBackend) -> list[Batch]:
    """Record every batch the real SQLite broker commits (then commit it)."""
    commits: list[Batch] = []
    commit = broker.commit

    def spy(batch: Batch) -> None:
        commit(batch)
        commits.append(batch)

    broker.commit = spy  # type: ignore[method-assign]
    return commits


def open_sqlite(path: Path) -> SqliteBackend:
    broker = open_backend(f"sqlite:///{path}")
    assert isinstance(broker, SqliteBackend)
    return broker


@pytest.mark.parametrize("fold", [0.5, 0.0])
async def test_quick_sync_steps_complete_an_instance_in_one_commit(
    tmp_path: Path, fold: float
) -> None:
    """Twenty instances of three quick ``def`` steps each: with folding, one commit
    completes them all and no step ever gets a stored work row; without it (``0``),
    every step costs its instances one more batch and commit."""
    broker = open_sqlite(tmp_path / "fold.db")
    app = three_steps_app(threading.Event())
    commits = recording(broker)
    client = ov.Client(broker, app=app)
    client.send_many([client.envelope(Job(job_id=f"j{i}")) for i in range(20)])
    engine = Engine(app, broker, sync_fold=fold)
    await engine.run_until_idle()
    await engine.stop()
    instances = client.instances()
    assert len(instances) == 20
    assert {i.status for i in instances} == {"completed"}
    assert {i.key: i.result for i in instances}["j3"] == ["r-j3", "c-j3", "s-j3"]
    if fold:
        assert len(commits) == 1
        (batch,) = commits
        assert {row.status for row in batch.instances.values()} == {"completed"}
        assert batch.work == {}  # added and removed within the batch: never stored
    else:
        assert len(commits) >= 4  # start + step 1, then a batch (or more) per step
    broker.close()


async def test_a_slow_sync_step_gets_its_work_row_before_the_commit(tmp_path: Path) -> None:
    """In one batch, a quick instance completes while a slow step's instance waits: the
    slow step's work row is in the commit of the batch that started it (a crash from
    then on re-runs the step after restart), and the engine does not wait for it longer
    than ``sync_fold``."""
    path = tmp_path / "slow.db"
    broker = open_sqlite(path)
    release = threading.Event()
    app = three_steps_app(release)
    commits = recording(broker)
    client = ov.Client(broker, app=app)
    client.send_many(
        [client.envelope(Job(job_id="quick")), client.envelope(Job(job_id="slow", slow=True))]
    )
    engine = Engine(app, broker, sync_fold=0.05)
    task = asyncio.create_task(engine.run())
    try:
        for _ in range(500):
            if commits:
                break
            await asyncio.sleep(0.01)
        assert commits, "the engine did not commit while the slow step ran"
        first = commits[0]
        by_key = {row.key: row for row in first.instances.values()}
        assert by_key["quick"].status == "completed"
        assert by_key["slow"].status == "running"
        slow_id = by_key["slow"].id
        assert [row.name for row in first.work.values() if row is not None] == [
            "three_steps_app.<locals>.charge"
        ]
        # durable: another connection to the file sees the row while the step still runs
        other = open_sqlite(path)
        try:
            assert [w.instance_id for w in other.work()] == [slow_id]
        finally:
            other.close()
        assert not release.is_set()
    finally:
        release.set()
    for _ in range(500):
        if client.instance(slow_id).status == "completed":
            break
        await asyncio.sleep(0.01)
    await engine.stop()
    await task
    assert client.instance(slow_id).result == ["r-slow", "c-slow", "s-slow"]
    assert broker.work() == []
    broker.close()


async def test_sync_fold_must_not_be_negative() -> None:
    with pytest.raises(ov.ConfigError, match="sync_fold"):
        Engine(ov.App("neg"), open_backend("memory://neg-fold"), sync_fold=-1)
