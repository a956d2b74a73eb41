"""Streams: windowed aggregations and event patterns over the log (issue 13).

Each operator is pure (``operator.py`` is its contract); ``runtime.py`` runs every
operator of an app as one participant of the engine's partition loop, so operator state,
results and the consumed offsets commit in one transaction.
"""
