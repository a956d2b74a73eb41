"""Kafka's changelog for ``Batch.expired``, without a broker: a deleted instance gets a
tombstone for every key of its own, a follower of the changelog drops it, and once
compaction has run a restore reads fewer records and no longer sees it.

(The same on a real broker, with its compaction: ``test_kafka_retention.py``.)
"""

from __future__ import annotations

from overture.backends.kafka.changelog import ChangelogRecord, records_of, restore
from overture.backends.memory import MemoryState
from overture.ports import Batch, InboxRow, InstanceRow, WaitRow, WorkRow


def _instance(iid: str, status: str) -> InstanceRow:
    return InstanceRow(iid, "p", 1, iid, status, 0, 1.0, 2.0, f"t-{iid}", journal_len=3)


def _compact(records: list[ChangelogRecord]) -> list[ChangelogRecord]:
    """What log compaction leaves once tombstones aged out: each key's latest value,
    keys whose latest is a tombstone gone."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        latest.pop(key, None)
        latest[key] = value
    return [(k, v) for k, v in latest.items() if v is not None]


def test_a_deleted_instance_leaves_the_changelog_and_its_followers() -> None:
    state = MemoryState()
    log: list[ChangelogRecord] = []

    def commit(batch: Batch) -> None:
        log.extend(records_of(batch, state))
        state.apply(batch)

    commit(
        Batch(
            "g",
            offsets={0: 5},
            instances={
                "done": _instance("done", "completed"),
                "live": _instance("live", "waiting"),
            },
            journal=[("done", 0, [{"e": 1}, {"e": 2}]), ("live", 0, [{"e": 1}])],
            waits={WaitRow("pay", "live", "live", 1): True},
            inbox={"b1": InboxRow("b1", "live", "pay", "live", b"{}", 1.0)},
        )
    )
    commit(Batch("g", journal=[("done", 2, [{"e": 3}])]))  # a second chunk
    commit(Batch("g", work={"w1": WorkRow("w1", "timer", 9.0, instance_id="done", seq=4)}))
    follower = restore(list(log))
    before = len(_compact(log))

    deletion = Batch("g", expired=["done"])
    tombstones = records_of(deletion, state)
    assert all(value is None for _, value in tombstones)
    keys = {k for k, _ in tombstones}
    assert keys == {
        b'["j","done",0]',
        b'["j","done",2]',
        b'["k","w1"]',
        b'["i","done"]',
    }
    commit(deletion)
    assert state.instance("done") is None and state.journal("done") == []

    restore(tombstones, follower)  # a client following the changelog
    assert follower.instance("done") is None
    assert follower.journal("done") == [] and follower.work() == []
    assert follower.instance("live") is not None and len(follower.waits()) == 1

    compacted = _compact(log)
    assert len(compacted) == before - 4  # fewer records to read on a restore
    restored = restore(compacted)
    assert restored.instance("done") is None
    assert restored.instance("live") is not None
    assert restored.journal("live") == [{"e": 1}]
    assert len(restored.waits()) == 1 and restored.snapshots(["live"])["live"].inbox

    # before compaction too: the tombstones win over the older records
    assert restore(list(log)).instance("done") is None


def test_the_memory_state_finds_expired_instances_in_finish_order() -> None:
    state = MemoryState()
    rows = {
        f"i{n}": InstanceRow(f"i{n}", "p", 1, None, "completed", 0, 0.0, float(n), "t")
        for n in (5, 1, 3)
    }
    rows["run"] = InstanceRow("run", "p", 1, None, "running", 0, 0.0, 0.0, "t")
    state.apply(Batch("g", instances=rows))
    assert state.expired(3.0, 10) == (["i1", "i3"], 5.0)
    assert state.expired(10.0, 1) == (["i1"], 3.0)
    assert state.expired(0.5, 10) == ([], 1.0)
    state.apply(Batch("g", expired=["i1", "i3"]))
    assert state.expired(10.0, 10) == (["i5"], None)
