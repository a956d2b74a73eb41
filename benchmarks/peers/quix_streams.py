"""The Quix Streams side of ``python -m benchmarks.streams_kafka``: count per key in
10-second tumbling windows, results on close (``.final()``), state in RocksDB.

Run by the benchmark with ``.venv-peers/bin/python`` (``bash benchmarks/peers/setup.sh
quix`` installs ``quixstreams`` there, never into the project's ``.venv``)::

    .venv-peers/bin/python benchmarks/peers/quix_streams.py --bootstrap HOST:PORT \\
        --input IN --output OUT --group G --state-dir DIR [--guarantee exactly-once]

Records are read as the benchmark produces them: key = the user, value = JSON with the
user, and the record's timestamp = the event time (Quix's default time source). Each
window's result goes to ``--output`` keyed by the user, as Quix writes it:
``{"start": ms, "end": ms, "value": count}``.
"""

from __future__ import annotations

import argparse
import logging

from quixstreams import Application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--guarantee", default="exactly-once")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="Quix's default: 5")
    args = parser.parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        loglevel=logging.WARNING,
        auto_create_topics=True,
    )
    source = app.topic(args.input, value_deserializer="json", key_deserializer="str")
    output = app.topic(args.output, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(source)
    sdf = sdf.tumbling_window(duration_ms=10_000, grace_ms=0).count().final()
    sdf.to_topic(output)
    print("quix: running", flush=True)
    app.run()


if __name__ == "__main__":
    main()
