"""A worker process for the kill -9 test: claims attempts of queue ``q``, finishes those
whose instance id starts with ``finish``, prints the ids it holds, then waits to be killed.

    python -m tests.kafka.claimer URL COUNT
"""

from __future__ import annotations

import sys
import time

from overture import tasks
from overture.backends.kafka.backend import KafkaBackend
from overture.codec import Codec


def main(url: str, count: int) -> None:
    backend = KafkaBackend(url)
    codec = Codec()
    held = []
    deadline = time.monotonic() + 60
    while len(held) < count and time.monotonic() < deadline:
        held += backend.tasks.claim(["q"], "doomed", count - len(held), 60.0)
        time.sleep(0.02)
    for task in held:
        envelope, message = tasks.parse_request(codec, task.request)
        if message.instance_id.startswith("finish"):
            result = tasks.completed(codec, envelope, message, "done")
            assert backend.tasks.finish(task.id, "doomed", result) == "accepted"
    time.sleep(1.0)  # the fetching thread commits the finished attempt's offset
    print(" ".join(sorted(t.id for t in held)), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
