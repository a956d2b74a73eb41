"""Keyed state as a participant of the partition loop uses it, on every backend: what it
stages commits with the batch's offsets, and its reads see what the batch being staged
and the batch still being committed wrote (the store cannot show those yet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence

import pytest

from overture.ports import Batch, NewRecord, Record
from overture.runtime.keyed import KeyedState
from overture.runtime.loop import PartitionLoop
from overture.runtime.observer import NO_OBSERVER
from overture.runtime.staging import Stage

from .conftest import Subject, data, event


class Counter:
    """Counts the records of each parity in keyed state, read-modify-write per record."""

    def __init__(self, loop: PartitionLoop) -> None:
        self.loop = loop

    def begin(self, stage: Stage, now: float) -> None:
        pass

    def consume(self, stage: Stage, records: Sequence[Record], now: float) -> None:
        for record in records:
            key = b"odd" if int(str(data(record.value))) % 2 else b"even"
            old = self.loop.state.get(stage, "count", key)
            stage.put_state("count", key, str(int(old or b"0") + 1).encode())

    def advance(self, stage: Stage, now: float) -> bool:
        return False

    def seal(self, stage: Stage, now: float) -> None:
        pass

    def settled(self, keep: Collection[str]) -> None:
        pass


async def test_a_participants_state_commits_with_its_offsets(subject: Subject) -> None:
    subject.backend.log.append([NewRecord(None, event(n), partition=0) for n in range(7)])
    engine = subject.engine(0)
    stats = {"batches": 0, "records": 0}
    # one record per batch: every read after the first meets the previous batch's
    # commit still in flight (a thread, beside the next batch, on SQLite and Kafka)
    loop = PartitionLoop(engine, "g", [0], 1, NO_OBSERVER, stats)
    loop.add(Counter(loop))
    loop.load()
    deadline = time.monotonic() + 60
    while stats["records"] < 7 and time.monotonic() < deadline:
        if not await loop.iterate(0.0):  # Kafka: the records are still being fetched
            await asyncio.sleep(0.02)
    await loop.settle()
    subject.settle()
    assert stats["records"] == 7
    for view in (engine.store, subject.backend.store, subject.reopened()):
        assert view.scan("count") == [(b"even", b"4"), (b"odd", b"3")]
    assert engine.store.offsets("g")[0] == 7  # in the same commits as the counts


def test_reads_see_the_stage_then_the_batch_in_flight_then_the_store(subject: Subject) -> None:
    committed = Batch("g")
    committed.state[("n", b"a")] = b"store"
    committed.state[("n", b"b")] = b"store"
    committed.state[("n", b"c")] = b"store"
    subject.engine().store.commit(committed)
    in_flight = Batch("g")  # written, as far as the loop knows, but not visible yet
    in_flight.state[("n", b"b")] = b"in flight"
    in_flight.state[("n", b"c")] = None
    in_flight.state[("n", b"d")] = b"in flight"
    state = KeyedState(subject.engine().store, lambda: in_flight)
    stage = Stage("g", 10)
    stage.put_state("n", b"d", b"staged")
    stage.put_state("n", b"e", b"staged")
    stage.delete_state("n", b"a")
    assert [state.get(stage, "n", k) for k in (b"a", b"b", b"c", b"d", b"e")] == [
        None,
        b"in flight",
        None,
        b"staged",
        b"staged",
    ]
    assert state.scan(stage, "n") == [(b"b", b"in flight"), (b"d", b"staged"), (b"e", b"staged")]
    assert state.scan(stage, "n", b"e") == [(b"e", b"staged")]
    assert state.scan(stage, "other") == []
    # with nothing in flight the store shows through what the stage leaves alone
    bare = KeyedState(subject.engine().store, lambda: None)
    assert bare.get(Stage("g", 10), "n", b"c") == b"store"


def test_staging_refuses_entries_that_are_not_text_and_bytes() -> None:
    stage = Stage("g", 10)
    for namespace, key, value in [
        ("n", 5, b"v"),
        ("n", bytearray(b"k"), b"v"),
        ("n", b"k", "text"),
        (b"n", b"k", b"v"),
    ]:
        with pytest.raises(TypeError, match="keyed-state"):
            stage.put_state(namespace, key, value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keyed-state key"):
        stage.delete_state("n", memoryview(b"k"))  # type: ignore[arg-type]
    assert stage.batch.state == {}
