"""Reproducible throughput and latency workloads for Overture (``python -m benchmarks``).

Modules: ``workloads`` (the benchmark apps), ``producer`` (event senders, in a thread or a
separate process), ``probe`` (completion detection by wrapping the store's commit),
``measure`` (one in-process measurement), ``baseline`` (raw sqlite3 writes),
``runner`` (one measurement per fresh subprocess), ``report`` (table and JSON),
``profiling`` (cProfile summaries) and ``__main__`` (the CLI).
"""
