"""The doorbell: wakeups between the processes that share one database file.

An appender rings the engine's doorbell (a datagram to an abstract UNIX socket named after
the file) after its commit, so the engine wakes within microseconds; ``PRAGMA
data_version`` polled every 50 ms is the safety net for a lost ring. A client waiting for
results registers its own bell there, and the engine rings it with the ids of the
instances each commit finished; a worker waiting for task attempts registers a task bell,
which the engine rings after each commit that publishes attempts.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable

from ...ports import Batch
from ...protocol import FINAL
from .files import connect

_POLL_SECONDS = 0.05
# Doorbell datagrams beyond the plain ring: a client registering its result bell, the
# engine's acknowledgement, and the ids of the instances a commit finished.
_REGISTER = b"register "
_REGISTER_TASKS = b"register-tasks "
_ACK = b"ack"
_FINISHED = b"finished "
_PUBLISHED = b"published"
_IDS_PER_DATAGRAM = 1000  # 32-character ids: ~33 kB, well inside a datagram
_REREGISTER_SECONDS = 1.0


def doorbell_address(path: str) -> bytes:
    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:24]
    return b"\0overture-" + digest.encode()


class Doorbell:
    """The bells of one database file, for one opened backend."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._doorbell = doorbell_address(path)
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.setblocking(False)
        self._local_watchers: list[Callable[[], None]] = []
        # Client processes waiting for results (their bells' addresses), learned from
        # registrations on the doorbell; rung after each commit that finishes instances.
        self._result_bells: dict[bytes, None] = {}
        # Workers waiting for task attempts, and the wakes of this process's own.
        self._task_bells: dict[bytes, None] = {}
        self._local_task_watchers: list[Callable[[], None]] = []

    def ring(self) -> None:
        """Tell a running engine (in any process) that records were appended."""
        for wake in list(self._local_watchers):
            wake()
        try:
            self._bell.sendto(b"!", self._doorbell)
        except OSError:
            pass  # no engine listening: it will read the records when it starts

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        stop = threading.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._doorbell)
        except OSError:
            sock.close()
            sock = None  # type: ignore[assignment]  # another subscriber holds it: poll only
        if sock is not None:
            sock.settimeout(_POLL_SECONDS)
        watcher = connect(self.path)

        def watch() -> None:
            last = watcher.execute("PRAGMA data_version").fetchone()[0]
            while not stop.is_set():
                rang = False
                if sock is not None:
                    try:
                        rang = self._heard(sock.recv(256))
                    except TimeoutError:
                        pass
                    except OSError:
                        return
                else:
                    stop.wait(_POLL_SECONDS)
                version = watcher.execute("PRAGMA data_version").fetchone()[0]
                if rang or version != last:
                    last = version
                    wake()

        thread = threading.Thread(target=watch, name="overture-doorbell", daemon=True)
        thread.start()
        self._local_watchers.append(wake)

        def unsubscribe() -> None:
            stop.set()
            if wake in self._local_watchers:
                self._local_watchers.remove(wake)
            thread.join(timeout=1.0)
            if sock is not None:
                sock.close()
            watcher.close()

        return unsubscribe

    def _heard(self, datagram: bytes) -> bool:
        """Handle a doorbell datagram; True if it announces appended records."""
        if datagram.startswith(_REGISTER):
            bells, address = self._result_bells, datagram[len(_REGISTER) :]
        elif datagram.startswith(_REGISTER_TASKS):
            bells, address = self._task_bells, datagram[len(_REGISTER_TASKS) :]
        else:
            return True
        bells[address] = None
        try:  # the acknowledgement tells the client its bell will be rung
            self._bell.sendto(_ACK, address)
        except OSError:
            bells.pop(address, None)
        return False

    def ring_results(self, batch: Batch) -> None:
        """Tell registered clients which instances this commit finished."""
        if not self._result_bells:
            return
        finished = [i.encode() for i, row in batch.instances.items() if row.status in FINAL]
        if not finished:
            return
        datagrams = [
            _FINISHED + b" ".join(finished[i : i + _IDS_PER_DATAGRAM])
            for i in range(0, len(finished), _IDS_PER_DATAGRAM)
        ]
        for address in list(self._result_bells):
            for datagram in datagrams:
                try:
                    self._bell.sendto(datagram, address)
                except BlockingIOError:
                    break  # its buffer is full: it catches up from the database
                except OSError:  # the client is gone
                    self._result_bells.pop(address, None)
                    break

    def ring_tasks(self, batch: Batch) -> None:
        """Tell waiting workers (of this process and registered ones) that this commit
        published task attempts."""
        if not any(task is not None for task in batch.tasks.values()):
            return
        for wake in list(self._local_task_watchers):
            wake()
        for address in list(self._task_bells):
            try:
                self._bell.sendto(_PUBLISHED, address)
            except BlockingIOError:
                pass  # its buffer is full of rings already: it will claim
            except OSError:  # the worker is gone
                self._task_bells.pop(address, None)

    def watch_tasks(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from a watcher thread, or the committing thread of this
        process) when a commit may have published task attempts: the engine rings the
        watcher's registered bell, as for :meth:`watch_finished`; until an engine has
        acknowledged the registration, any change of the file (``PRAGMA data_version``,
        every 50 ms) wakes it."""
        self._local_task_watchers.append(wake)

        def heard(datagram: bytes) -> None:
            if datagram == _PUBLISHED:
                wake()

        stop_listening = self._listen(_REGISTER_TASKS, "overture-task-bell", heard, wake)

        def unsubscribe() -> None:
            if wake in self._local_task_watchers:
                self._local_task_watchers.remove(wake)
            stop_listening()

        return unsubscribe

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` (from a watcher thread) with the ids of the instances a commit
        finished, or with ``None`` when state changed in a way the watcher could not see
        (before the engine acknowledged it): the caller re-reads what it waits for.

        The watcher binds its own bell and registers it with the engine's doorbell (again
        every second, so a restarted engine learns it too); the engine rings it after each
        commit that finishes instances. Until an engine has acknowledged the registration,
        ``PRAGMA data_version`` checked every 50 ms stands in (no engine may be running yet).
        """

        def heard(datagram: bytes) -> None:
            if datagram.startswith(_FINISHED):
                wake(datagram[len(_FINISHED) :].decode().split(" "))

        return self._listen(_REGISTER, "overture-result-bell", heard, lambda: wake(None))

    def _listen(
        self,
        register_as: bytes,
        name: str,
        heard: Callable[[bytes], None],
        unseen: Callable[[], None],
    ) -> Callable[[], None]:
        """A bell of this process registered with the engine's doorbell (``register_as``
        + its address, again every second, so a restarted engine learns it too): each
        datagram the engine sends it goes to ``heard``; ``unseen`` is called when state
        may have changed unannounced (the engine's first acknowledgement, and any change
        of the file while no engine acknowledges). Returns the function that stops it."""
        stop = threading.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(b"\0overture-r-" + os.urandom(12).hex().encode())
        sock.settimeout(_POLL_SECONDS)
        register = register_as + sock.getsockname()
        watcher = connect(self.path)

        def watch() -> None:
            last = watcher.execute("PRAGMA data_version").fetchone()[0]
            acked = 0.0  # when the engine last acknowledged the registration
            registered = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now - registered >= _REREGISTER_SECONDS:
                    registered = now
                    try:
                        sock.sendto(register, self._doorbell)
                    except OSError:
                        pass  # no engine yet
                try:
                    datagram = sock.recv(65536)
                except TimeoutError:
                    datagram = b""
                except OSError:
                    return
                if datagram == _ACK:
                    fresh = now - acked > 2 * _REREGISTER_SECONDS
                    acked = now
                    if fresh:  # a commit may have happened before it listened
                        unseen()
                    continue
                if datagram:
                    heard(datagram)
                    continue
                if now - acked > 2 * _REREGISTER_SECONDS:
                    version = watcher.execute("PRAGMA data_version").fetchone()[0]
                    if version != last:
                        last = version
                        unseen()

        thread = threading.Thread(target=watch, name=name, daemon=True)
        thread.start()

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=1.0)
            sock.close()
            watcher.close()

        return unsubscribe

    def close(self) -> None:
        self._bell.close()
