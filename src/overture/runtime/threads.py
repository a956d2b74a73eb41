"""A pool of daemon threads for sync steps and handlers, as many as are really needed.

``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so
one sync step stuck on a slow service would keep a stopped engine process alive until the
step returned. A daemon thread is simply abandoned at exit; the step's work row is still
stored, so the step runs again after restart (steps are at least once by contract).

The pool also lets a caller *give up* on a call that overran its time limit
(:meth:`DaemonThreadPool.abandon`): a thread cannot be killed, so the pool adds a
replacement at once and the stuck thread leaves the pool when its call finally returns.
Without this, a few steps that never return would hold every thread and starve all the
others.

**Elastic.** ``max_workers`` bounds how many calls run at once, but the pool does not run
that many just because that many are queued. Quick calls (a few microseconds of Python)
run best on one thread: every extra thread woken for them only hands the GIL back and
forth with the others and with the engine's loop (with 16 threads that cost more than the
calls; see docs/benchmarks.md, "Sync steps"). So a call queued while no thread is active
wakes one; more are added only when every active thread has been inside its current call
for longer than ``stall`` (it is blocked on I/O, a lock or a sleep), by a small watcher
thread, doubling the active threads each time, up to ``max_workers``: blocking calls
still reach ``max_workers`` at once within a few ``stall`` periods. A thread that finds
the queue empty goes idle and is woken only when needed again (idle threads are kept,
not ended).

A thread that waits for the GIL looks just like a blocked one from outside. The watcher
tells them apart by its own lateness: if it did not get to run when it asked to, the
interpreter was busy (the engine's loop or a CPU-bound call held the GIL), so a thread
that made no progress was not necessarily blocked, and adding threads would not help.
It grows the pool only after a wake-up on time.

Calls are plain callables without a ``Future``: the executor reports outcomes itself, in
bursts (see ``runtime/executor.py``), and a ``Future`` per step was measurable overhead.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

_Call = Callable[[], bool]
"""Runs one job; returns True if its thread was replaced meanwhile and must leave."""

STALL = 0.002
"""Seconds every active thread must have spent in its current call before the pool adds
threads. Well above a quick step, well below a blocking one's I/O."""


class DaemonThreadPool:
    """Up to ``max_workers`` daemon threads running calls in order, started on demand
    and woken only when the ones already running are blocked (see the module's text).

    Every call must catch its own exceptions (an escaping one is a bug: it ends the
    thread, and ``threading.excepthook`` prints it).
    """

    def __init__(self, max_workers: int, name: str, *, stall: float = STALL) -> None:
        if max_workers < 1:
            raise ValueError("a thread pool needs at least one thread")
        self._max = max_workers
        self._name = name
        self._stall = stall
        self._calls: deque[_Call] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # idle threads wait here
        self._watch = threading.Condition(self._lock)  # the watcher waits here
        self._threads = 0  # alive
        self._active = 0  # alive and not idle: running a call, or about to take one
        self._wakeups = 0  # idle threads asked to become active, not yet awake
        self._extra = 0  # capacity lent in place of abandoned threads
        self._started = 0  # for thread names
        self._last_start = 0.0  # when an active thread last took a call
        self._watcher: threading.Thread | None = None
        self._watching = False  # the watcher is looking (it needs no wake-up)
        self._closed = False

    @property
    def max_workers(self) -> int:
        """The number of threads that run calls at the same time, at most."""
        return self._max

    @property
    def threads(self) -> int:
        """Threads alive now (running a call or idle)."""
        return self._threads

    def run(self, call: _Call) -> None:
        """Queue ``call``; it runs as soon as a thread takes it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._calls.append(call)
            if not self._active and not self._wakeups:
                self._add(1)  # nobody would take it: one thread, at once

    def abandon(self) -> None:
        """A caller gave up waiting for a running call: lend the pool one more thread
        until that call returns True (its thread then leaves the pool)."""
        with self._lock:
            self._extra += 1
            if not self._closed and self._calls:
                self._add(1)  # the abandoned thread is blocked for sure: replace it now

    def _add(self, count: int) -> None:
        """Make up to ``count`` more threads active: wake idle ones first, then start
        new ones, within ``max_workers`` (lock held)."""
        for _ in range(count):
            if self._active + self._wakeups >= self._max + self._extra:
                break
            if self._threads > self._active + self._wakeups:  # an idle thread
                self._wakeups += 1
                self._wake.notify()
                continue
            self._threads += 1
            self._active += 1
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        if self._max > 1 and not self._watching:  # threads are active: watch them
            self._watching = True
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch_loop, name=f"{self._name}-watch", daemon=True
                )
                self._watcher.start()
            else:
                self._watch.notify()

    def _watch_loop(self) -> None:
        """While threads are active, look every ``stall`` seconds: calls waiting and no
        call taken for a whole ``stall`` means every active thread is stuck in its call."""
        stall = self._stall
        clock = time.monotonic
        with self._lock:
            while not self._closed:
                # (a woken idle thread counts: it is active as soon as it runs, and _add,
                # which woke it, expects the watcher to be looking)
                if not self._active and not self._wakeups:
                    self._watching = False
                    self._watch.wait()  # woken by _add when threads are active again
                    continue
                asked = clock()
                self._watch.wait(stall)
                now = clock()
                if now - asked > 1.5 * stall:
                    continue  # woken late: the GIL was busy, so the threads may just wait for it
                if (
                    self._calls
                    and now - self._last_start >= stall
                    and self._active + self._wakeups < self._max + self._extra
                ):
                    self._add(max(1, self._active))  # double: blocked calls ramp up fast
                    self._last_start = now  # the added threads get a stall period to start

    def _work(self) -> None:
        calls = self._calls
        clock = time.monotonic
        while True:
            with self._lock:
                while not calls:
                    self._active -= 1
                    while not self._wakeups and not self._closed:
                        self._wake.wait()
                    if not self._wakeups:  # closed, and nobody asked for this thread
                        self._threads -= 1
                        return
                    self._wakeups -= 1
                    self._active += 1
                call = calls.popleft()
                self._last_start = clock()
            if call():  # replaced meanwhile: its replacement runs on, this thread leaves
                with self._lock:
                    self._extra -= 1
                    self._active -= 1
                    self._threads -= 1
                return

    def shutdown(self, *, cancel: bool = True) -> list[_Call]:
        """Stop accepting work; running calls are left to finish (or be abandoned at exit).
        With ``cancel``, the calls not started yet are dropped and returned."""
        with self._lock:
            self._closed = True
            dropped: list[_Call] = []
            if cancel:
                dropped = list(self._calls)
                self._calls.clear()
            self._wake.notify_all()
            self._watch.notify_all()
        return dropped
