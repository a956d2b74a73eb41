"""HTTP ingest: events/s through ``POST /events``, single events and batches.

Starts a real API process (``overture serve``, or ``overture run --http`` with
``--engine``) on a fresh SQLite file, then drives it with an asyncio load generator in
other processes: each keeps ``--concurrency`` keep-alive HTTP/1.1 connections busy, one
request after the other on each (binary mode for single events,
``application/cloudevents-batch+json`` for batches) for ``--seconds``. The generator
speaks HTTP/1.1 on asyncio streams itself: httpx's ``AsyncClient`` was tried first and
was the bottleneck (64 concurrent ``GET /healthz`` took 15 ms each through its pool, 0.4
ms each on raw streams), and no compiled load generator (oha, hey, wrk) is
pip-installable here. Every 202 means the events were committed, so the
figures are durable events. Reports requests/s, events/s and latency percentiles, and
checks that the log holds every acknowledged event.

    .venv/bin/python -m benchmarks.http_ingest --batch 1 --seconds 10
    .venv/bin/python -m benchmarks.http_ingest --batch 100 --seconds 10
    .venv/bin/python -m benchmarks.http_ingest --batch 1 --engine   # API in the engine

Not a timed test: run it by hand on a quiet machine (the generator shares the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import orjson

import overture as ov

REPO = Path(__file__).resolve().parent.parent
APP = "examples.orders:app"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _event(n: str) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": n,
        "source": "/bench",
        "type": "order.placed",
        "data": {"order_id": n, "item": "book", "quantity": 1},
    }


async def _drive(
    base: str, batch: int, concurrency: int, seconds: float
) -> tuple[int, list[float]]:
    """``concurrency`` keep-alive connections, each posting one request after the other
    for ``seconds``; returns (events acknowledged, latencies)."""
    host, port = base.removeprefix("http://").split(":")
    prefix = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    acked = 0
    counter = 0
    end = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal acked, counter
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < end:
                counter += 1
                if batch == 1:
                    n = f"{prefix}-{counter}"
                    body = orjson.dumps({"order_id": n, "item": "book", "quantity": 1})
                    head = (
                        f"ce-specversion: 1.0\r\nce-id: {n}\r\nce-source: /bench\r\n"
                        "ce-type: order.placed\r\ncontent-type: application/json\r\n"
                    )
                else:
                    body = orjson.dumps([_event(f"{prefix}-{counter}-{i}") for i in range(batch)])
                    head = "content-type: application/cloudevents-batch+json\r\n"
                request = (
                    f"POST /events HTTP/1.1\r\nhost: {host}\r\n{head}"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode() + body
                began = time.perf_counter()
                writer.write(request)
                status, answer = await _response(reader)
                latencies.append(time.perf_counter() - began)
                if status != 202:
                    raise RuntimeError(f"{status}: {answer!r}")
                acked += batch
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return acked, latencies


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (uvicorn's)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _generator(base: str, batch: int, concurrency: int, seconds: float, out: Connection) -> None:
    out.send(asyncio.run(_drive(base, batch, concurrency, seconds)))


def _ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API process exited")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the API did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight per generator"
    )
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--engine", action="store_true", help="overture run --http, not serve")
    parser.add_argument("--dir", default=None, help="where the SQLite file goes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'ingest.db'}"
        port = _free_port()
        if args.engine:
            command = ["run", APP, "--http", f"127.0.0.1:{port}", "--log-level", "WARNING"]
        else:
            command = ["serve", APP, "--port", str(port), "--log-level", "WARNING"]
        env = {k: v for k, v in os.environ.items() if k != "OVERTURE_BACKEND"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "overture.cli", *command, "--backend", url], cwd=REPO, env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _ready(base, proc)
            pipes = []
            workers = []
            for _ in range(args.generators):
                mine, theirs = mp.Pipe(duplex=False)
                worker = mp.Process(
                    target=_generator,
                    args=(base, args.batch, args.concurrency, args.seconds, theirs),
                )
                worker.start()
                pipes.append(mine)
                workers.append(worker)
            began = time.perf_counter()
            results = [pipe.recv() for pipe in pipes]
            elapsed = time.perf_counter() - began
            for worker in workers:
                worker.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        events = sum(acked for acked, _ in results)
        latencies = sorted(x for _, lat in results for x in lat)
        with ov.Client(url) as client:
            logged = sum(
                client.backend.log.end_offset(p) for p in range(client.backend.log.partitions)
            )
    requests = len(latencies)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(
        f"{'run --http' if args.engine else 'serve'} batch={args.batch} "
        f"concurrency={args.concurrency}x{args.generators} for {elapsed:.1f}s: "
        f"{requests / elapsed:,.0f} requests/s, {events / elapsed:,.0f} events/s, "
        f"latency p50 {q[49] * 1000:.1f} ms p99 {q[98] * 1000:.1f} ms; "
        f"{logged} records in the log for {events} acknowledged events"
    )


if __name__ == "__main__":
    main()
