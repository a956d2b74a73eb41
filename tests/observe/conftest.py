"""Fixtures of the observability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .tracing_support import EXPORTER, RECORDER, SAMPLER, installed


@pytest.fixture
def spans() -> Iterator[list[object]]:
    """Record the spans of this test (the global SDK provider's, always sampled unless
    the test switches ``tracing_support.SAMPLER.inner``); yields nothing useful itself:
    read ``EXPORTER.get_finished_spans()``."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    EXPORTER.clear()
    RECORDER.started = RECORDER.ended = 0
    RECORDER.on = True
    SAMPLER.asked.clear()
    try:
        with installed():
            yield []
    finally:
        RECORDER.on = False
        SAMPLER.inner = ALWAYS_ON
        EXPORTER.clear()
