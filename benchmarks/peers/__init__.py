"""Side-by-side W1/W2 benchmarks against peer engines (Temporal, DBOS, Restate, Celery).

See ``docs/benchmarks.md``. Run ``bash benchmarks/peers/setup.sh`` once, then
``python -m benchmarks.peers``. Not part of the test suite or CI.
"""
