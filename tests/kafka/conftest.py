"""The Kafka tests use the session broker of ``tests/conftest.py`` (``kafka_bootstrap``)."""
