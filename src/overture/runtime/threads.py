"""A pool of daemon threads for sync steps and handlers.

``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so
one sync step stuck on a slow service would keep a stopped engine process alive until the
step returned. A daemon thread is simply abandoned at exit; the step's work row is still
stored, so the step runs again after restart (steps are at least once by contract).

The pool also lets a caller *give up* on a call that overran its time limit
(:meth:`DaemonThreadPool.abandon`): a thread cannot be killed, so the pool starts a
replacement at once and the stuck thread leaves the pool when its call finally returns.
Without this, a few steps that never return would hold every thread and starve all the
others.

Calls are plain callables without a ``Future``: the executor reports outcomes itself, in
bursts (see ``runtime/executor.py``), and a ``Future`` per step was measurable overhead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

_Call = Callable[[], bool]
"""Runs one job; returns True if its thread was replaced meanwhile and must leave."""


class DaemonThreadPool:
    """Up to ``max_workers`` daemon threads, started on demand, running calls in order.

    Every call must catch its own exceptions (an escaping one is a bug: it ends the
    thread, and ``threading.excepthook`` prints it).
    """

    def __init__(self, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError("a thread pool needs at least one thread")
        self._max = max_workers
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # alive
        self._idle = 0  # alive and not running a call (waiting, or about to wait)
        self._queued = 0  # calls put and not yet taken
        self._extra = 0  # capacity lent in place of abandoned threads
        self._started = 0  # for thread names
        self._closed = False

    @property
    def max_workers(self) -> int:
        """The number of threads that run calls at the same time."""
        return self._max

    def run(self, call: _Call) -> None:
        """Queue ``call``; it runs as soon as a thread is free."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._queued += 1
            self._grow()
        self._calls.put(call)

    def abandon(self) -> None:
        """A caller gave up waiting for a running call: lend the pool one more thread
        until that call returns True (its thread then leaves the pool)."""
        with self._lock:
            self._extra += 1
            if not self._closed:
                self._grow()

    def _grow(self) -> None:
        """Start a thread if calls wait and no idle thread will take them (lock held)."""
        if self._queued > self._idle and self._threads < self._max + self._extra:
            self._threads += 1
            self._idle += 1
            self._started += 1
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            replaced = call()
            with self._lock:
                if replaced:  # its replacement runs on: this thread leaves
                    self._extra -= 1
                    self._threads -= 1
                    return
                self._idle += 1

    def shutdown(self, *, cancel: bool = True) -> list[_Call]:
        """Stop accepting work; running calls are left to finish (or be abandoned at exit).
        With ``cancel``, the calls not started yet are dropped and returned."""
        with self._lock:
            self._closed = True
            threads = self._threads
        dropped: list[_Call] = []
        if cancel:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    dropped.append(call)
        for _ in range(threads):
            self._calls.put(None)
        return dropped
