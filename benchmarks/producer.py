"""Event producers: a thread (memory://, or the one-at-a-time runs) or a separate process
(SQLite load runs, as ``overture send`` or another service would be).

A producer sends ``n`` events as fast as it can with ``Client.send_many`` in chunks, and
returns, per event, its id, its key and its *send time*: ``time.time()`` taken just before
the ``send_many`` call that carried it (so the append itself counts toward latency).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import overture as ov

from .workloads import APPS, EVENTS


@dataclass(slots=True)
class Sent:
    """What one producer phase did."""

    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)  # duration of each send_many

    ended: float = 0.0  # when the last send_many returned
    began: float = 0.0  # when the first send_many was called

    @property
    def first(self) -> float:
        return min(self.times) if self.times else self.began


def send(
    client: ov.Client,
    kind: str,
    keys: list[str],
    chunk: int,
    rate: float = 0.0,
    record: bool = True,
) -> Sent:
    """Send one event of ``kind`` (a key of ``workloads.EVENTS``) per key, ``chunk`` per
    call, as fast as possible or, with ``rate`` > 0, paced to ``rate`` events per second.
    ``record=False`` keeps no per-event ids, keys or times (M1: they would sit in the
    measured process's memory)."""
    make = EVENTS[kind]
    out = Sent()
    began = time.time()
    for start in range(0, len(keys), chunk):
        if rate > 0:
            delay = began + start / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        part = keys[start : start + chunk]
        envelopes = [client.envelope(make(k)) for k in part]
        t0 = time.time()
        client.send_many(envelopes)
        out.ended = time.time()
        out.began = out.began or t0
        out.call_seconds.append(out.ended - t0)
        if not record:
            continue
        out.ids.extend(e.id for e in envelopes)
        out.keys.extend(part)
        out.times.extend([t0] * len(part))
    return out


def _serve(url: str, workload: str, conn: Connection) -> None:
    """Process entry point: answer ("send", kind, keys, chunk, rate, record) requests until
    "stop"."""
    client = ov.Client(url, app=APPS[workload]())
    conn.send("ready")
    while True:
        request = conn.recv()
        if request[0] == "stop":
            break
        _, kind, keys, chunk, rate, record = request
        conn.send(send(client, kind, keys, chunk, rate, record))
    client.close()


class RemoteProducer:
    """A producer in a separate (spawned) Python process."""

    def __init__(self, url: str, workload: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(url, workload, child), daemon=True)
        self._proc.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("producer process did not start")

    def send(
        self, kind: str, keys: list[str], chunk: int, rate: float = 0.0, record: bool = True
    ) -> Sent:
        """Blocking: call from a thread (``asyncio.to_thread``), never on the loop."""
        self._conn.send(("send", kind, keys, chunk, rate, record))
        result: Any = self._conn.recv()
        assert isinstance(result, Sent)
        return result

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


class LocalProducer:
    """A producer running in a thread of this process (required for memory://)."""

    def __init__(self, url: str, workload: str) -> None:
        self._client = ov.Client(url, app=APPS[workload]())

    def send(
        self, kind: str, keys: list[str], chunk: int, rate: float = 0.0, record: bool = True
    ) -> Sent:
        return send(self._client, kind, keys, chunk, rate, record)

    def close(self) -> None:
        self._client.close()
