"""The drivers' side of the ride-sharing example: answers trip offers as drivers would.

Each ``driver.offer`` attempt is a task on the ``drivers`` queue (in a real system the
dispatch service would push it to the driver's phone). This script claims them from the
backend's task queue and answers them as told, printing one JSON line per answer with
what the queue said (``accepted``: the answer is on the log; ``ended``: the offer was
withdrawn or its deadline passed, the answer was refused)::

    python -m examples.ridesharing_drivers --backend sqlite:///rides.db \\
        --answer cy=accept --answer bob=decline --answer ann=accept@2

``DRIVER=accept`` or ``DRIVER=decline``, optionally ``@SECONDS`` after the offer arrived;
a driver not named never answers (the offer runs into its deadline). It runs until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from types import FrameType

from overture import tasks
from overture.backends import open_backend
from overture.codec import Codec
from overture.ports import ClaimedTask

QUEUE = "drivers"
LEASE = 120.0
"""Seconds an offer stays this script's: longer than any answer's delay."""


@dataclass(frozen=True)
class Answer:
    accept: bool
    after: float


def parse_answer(text: str) -> tuple[str, Answer]:
    """``DRIVER=accept|decline[@SECONDS]`` to the driver and their answer.

    Raises:
        ValueError: not of that form.
    """
    driver, sep, rest = text.partition("=")
    verdict, at, delay = rest.partition("@")
    if not sep or not driver or verdict not in ("accept", "decline"):
        raise ValueError(f"{text!r}: expected DRIVER=accept or DRIVER=decline[@SECONDS]")
    try:
        after = float(delay) if at else 0.0
    except ValueError:
        raise ValueError(f"{text!r}: {delay!r} is not a number of seconds") from None
    if after < 0:
        raise ValueError(f"{text!r}: the delay cannot be negative")
    return driver, Answer(accept=verdict == "accept", after=after)


def serve(backend_url: str, answers: dict[str, Answer], stop: threading.Event) -> None:
    """Claim offers and answer them per ``answers`` until ``stop`` is set."""
    backend = open_backend(backend_url)
    queue = backend.tasks
    codec = Codec()
    worker = f"drivers-{uuid.uuid4().hex[:8]}"
    due: list[tuple[float, ClaimedTask, str, Answer]] = []
    wake = threading.Event()
    unsubscribe = queue.subscribe(wake.set)
    print(json.dumps({"event": "running", "worker": worker}), flush=True)
    try:
        while not stop.is_set():
            for claimed in queue.claim([QUEUE], worker, 16, LEASE):
                _, request = tasks.parse_request(codec, claimed.request)
                driver = str(request.input["driver"])
                answer = answers.get(driver)
                print(json.dumps({"event": "offer", "driver": driver}), flush=True)
                if answer is not None:
                    due.append((time.monotonic() + answer.after, claimed, driver, answer))
            now = time.monotonic()
            for entry in [d for d in due if d[0] <= now]:
                due.remove(entry)
                _, claimed, driver, answer = entry
                envelope, request = tasks.parse_request(codec, claimed.request)
                result = tasks.completed(
                    codec, envelope, request, {"accepted": answer.accept, "driver": driver}
                )
                outcome = queue.finish(claimed.id, worker, result)
                line = {"event": "answer", "driver": driver, "accepted": answer.accept}
                print(json.dumps({**line, "outcome": outcome}), flush=True)
            timeout = min([d[0] for d in due], default=now + 0.5) - time.monotonic()
            wake.wait(max(0.0, min(timeout, 0.5)))  # polling too: the bell is a hint
            wake.clear()
    finally:
        unsubscribe()
        backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        default=os.environ.get("OVERTURE_BACKEND", "sqlite:///overture.db"),
        help="the backend URL (default: $OVERTURE_BACKEND, else sqlite:///overture.db)",
    )
    parser.add_argument(
        "--answer", action="append", default=[], metavar="DRIVER=accept|decline[@SECONDS]"
    )
    args = parser.parse_args(argv)
    answers: dict[str, Answer] = {}
    for text in args.answer:
        try:
            driver, answer = parse_answer(text)
        except ValueError as error:
            parser.error(str(error))
        answers[driver] = answer
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    serve(args.backend, answers, stop)
    sys.exit(0)


if __name__ == "__main__":
    main()
