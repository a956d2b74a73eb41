"""``worker_threads.Coalescer`` on real port threads: the calls of one loop turn are one
batch, each caller gets its own item's value or exception, and a batch that raises
fails every caller of it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from overture.worker_threads import Coalescer, PortThreads


class Recorder:
    """A batch function that remembers each batch and the thread it ran on."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        self.threads.add(threading.current_thread().name)
        if -1 in items:
            raise OSError("the disk is gone")
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in items]


async def test_the_calls_of_one_turn_are_one_batch_each_with_its_own_answer() -> None:
    pool = PortThreads(4, "coalescer-test")
    batch = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(pool, batch)
    try:
        first = await asyncio.gather(*(coalescer.call(n) for n in range(6)), return_exceptions=True)
        second = await coalescer.call(8)  # a later turn: a batch of its own
    finally:
        pool.shutdown()
    assert batch.batches == [[0, 1, 2, 3, 4, 5], [8]]
    assert [v if isinstance(v, int) else str(v) for v in first] == [
        0,
        "odd 1",
        20,
        "odd 3",
        40,
        "odd 5",
    ]
    assert second == 80
    assert all(name.startswith("coalescer-test") for name in batch.threads)  # off the loop


async def test_a_batch_that_raises_fails_every_caller_and_the_next_batch_runs() -> None:
    pool = PortThreads(2, "coalescer-test")
    batch = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(pool, batch)
    try:
        failed = await asyncio.gather(coalescer.call(2), coalescer.call(-1), return_exceptions=True)
        assert await coalescer.call(4) == 40
    finally:
        pool.shutdown()
    assert [type(e) for e in failed] == [OSError, OSError]


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    pool = PortThreads(2, "coalescer-test")
    gate = threading.Event()

    def slow(items: list[int]) -> list[int | Exception]:
        gate.wait(5)
        return [n + 1 for n in items]

    coalescer: Coalescer[int, int] = Coalescer(pool, slow)
    try:
        kept = asyncio.ensure_future(coalescer.call(1))
        dropped = asyncio.ensure_future(coalescer.call(2))
        await asyncio.sleep(0.01)  # the batch is running
        dropped.cancel()
        gate.set()
        assert await kept == 2
        with pytest.raises(asyncio.CancelledError):
            await dropped
    finally:
        gate.set()
        pool.shutdown()
