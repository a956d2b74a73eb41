"""The step pool grows only when its threads are blocked: quick calls run on one or two
threads, blocking ones still reach ``max_workers`` at once."""

from __future__ import annotations

import threading
import time

from overture.runtime.threads import DaemonThreadPool


class Tracker:
    """Counts calls running at once, and when all have returned."""

    def __init__(self, total: int) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.left = total
        self.all_done = threading.Event()
        self.threads: set[int] = set()

    def call(self, work: float) -> bool:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.get_ident())
        if work:
            time.sleep(work)
        with self.lock:
            self.running -= 1
            self.left -= 1
            if not self.left:
                self.all_done.set()
        return False


def test_blocking_calls_reach_max_workers() -> None:
    """160 calls of 10 ms I/O on 16 threads: all 16 run at once, so the whole run takes
    about 10 rounds of 10 ms, not 160."""
    pool = DaemonThreadPool(16, "test-blocking")
    tracker = Tracker(160)
    began = time.monotonic()
    try:
        for _ in range(160):
            pool.run(lambda: tracker.call(0.01))
        assert tracker.all_done.wait(10)
    finally:
        pool.shutdown()
    assert tracker.peak == 16
    assert time.monotonic() - began < 0.8  # 1.6 s on one thread; ~0.1 s ideal


def test_quick_calls_do_not_wake_every_thread() -> None:
    """Bursts of quick calls queued at once: a thread or two take them all (a pool that
    started a thread per waiting call would run all 16)."""
    pool = DaemonThreadPool(16, "test-quick")
    bursts, size = 20, 500
    tracker = Tracker(bursts * size)
    try:
        for _ in range(bursts):
            for _ in range(size):
                pool.run(lambda: tracker.call(0))
            time.sleep(0.002)
        assert tracker.all_done.wait(10)
        # one thread here on a quiet machine; a loaded one may deschedule a thread long
        # enough to look blocked now and then (a pool that wakes one per call: all 16)
        assert pool.threads <= 8
        assert len(tracker.threads) <= 8
    finally:
        pool.shutdown()


def test_a_thread_stuck_in_a_call_gets_help_for_the_next_one() -> None:
    """One call blocks for good; a call queued after it still runs, within a few stall
    periods (nothing else is queued that would prompt the pool to grow)."""
    pool = DaemonThreadPool(4, "test-stuck")
    release = threading.Event()
    ran = threading.Event()
    try:
        pool.run(lambda: release.wait(10) and False)
        time.sleep(0.05)
        pool.run(lambda: ran.set() or False)
        assert ran.wait(1)
    finally:
        release.set()
        pool.shutdown()
