"""W1 and W2 as module-level apps, for the engine processes of ``benchmarks.kafka``::

overture run benchmarks.kafka_apps:w1 --backend kafka://127.0.0.1:PORT/ns?partitions=4
"""

from __future__ import annotations

from .workloads import w1_app, w2_app

w1 = w1_app()
w2 = w2_app()
