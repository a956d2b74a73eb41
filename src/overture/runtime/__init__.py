"""The runtime: drives the pure core with real I/O (log, store, clock, step execution)."""
