"""The doorbell: wakeups between the processes that share one database file.

An appender rings the engine's doorbell (a datagram to an abstract UNIX socket named after
the file) after its commit, so the engine wakes within microseconds; ``PRAGMA
data_version`` polled every 50 ms is the safety net for a lost ring. A client waiting for
results registers its own bell there, and the engine rings it with the ids of the
instances each commit finished.
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
_ACK = b"ack"
_FINISHED = b"finished "
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
        if not datagram.startswith(_REGISTER):
            return True
        address = datagram[len(_REGISTER) :]
        self._result_bells[address] = None
        try:  # the acknowledgement tells the client its bell will be rung
            self._bell.sendto(_ACK, address)
        except OSError:
            self._result_bells.pop(address, None)
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

    def watch_finished(self, wake: Callable[[list[str] | None], None]) -> Callable[[], None]:
        """Call ``wake`` (from a watcher thread) with the ids of the instances a commit
        finished, or with ``None`` when state changed in a way the watcher could not see
        (before the engine acknowledged it): the caller re-reads what it waits for.

        The watcher binds its own bell and registers it with the engine's doorbell (again
        every second, so a restarted engine learns it too); the engine rings it after each
        commit that finishes instances. Until an engine has acknowledged the registration,
        ``PRAGMA data_version`` checked every 50 ms stands in (no engine may be running yet).
        """
        stop = threading.Event()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(b"\0overture-r-" + os.urandom(12).hex().encode())
        sock.settimeout(_POLL_SECONDS)
        register = _REGISTER + sock.getsockname()
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
                if datagram.startswith(_FINISHED):
                    wake(datagram[len(_FINISHED) :].decode().split(" "))
                    continue
                if datagram == _ACK:
                    fresh = now - acked > 2 * _REREGISTER_SECONDS
                    acked = now
                    if fresh:  # a commit may have finished something before it listened
                        wake(None)
                    continue
                if now - acked > 2 * _REREGISTER_SECONDS:
                    version = watcher.execute("PRAGMA data_version").fetchone()[0]
                    if version != last:
                        last = version
                        wake(None)

        thread = threading.Thread(target=watch, name="overture-result-bell", daemon=True)
        thread.start()

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=1.0)
            sock.close()
            watcher.close()

        return unsubscribe

    def close(self) -> None:
        self._bell.close()
