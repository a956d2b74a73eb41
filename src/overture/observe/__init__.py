"""Observability: what an engine, a worker or the HTTP API tells operators (logs...)."""
