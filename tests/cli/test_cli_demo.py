"""``overture demo``: the order example end to end on the real clock."""

from __future__ import annotations

import time

from cli_helpers import Invoke, ok
from tests.conftest import kafka_url

import overture as ov


def test_demo_runs_every_outcome(invoke: Invoke) -> None:
    started = time.monotonic()
    out = ok(invoke("demo", "--payment-timeout", "1", backend=False))
    assert time.monotonic() - started < 15
    for outcome in (
        "shipped",
        "out_of_stock",
        "timed out waiting for payment.received",
        "compensate:release",
        "released reservation res-o-1003",
        "released reservation res-o-1004",  # the operator's cancel compensates too
        "notification: order o-1001 shipped",
        "cancelled by an operator",
        "every order ended as expected",
    ):
        assert outcome in out, outcome


def test_demo_can_keep_its_database(invoke: Invoke, url: str) -> None:
    ok(invoke("demo", "--payment-timeout", "0.5"))
    with ov.Client(url) as client:
        results = sorted(str(i.result) for i in client.instances())
    assert results == ["None", "cancelled", "out_of_stock", "shipped"]


def test_demo_runs_on_kafka(invoke: Invoke, kafka_bootstrap: str) -> None:
    """``--backend kafka://`` (as docs/cli.md offers): the demo's engines run per partition
    through a host, as ``overture run`` runs them (it once ran one engine on the whole
    backend, which Kafka refused)."""
    url = kafka_url(kafka_bootstrap)
    out = ok(invoke("demo", "--payment-timeout", "1", "--backend", url, backend=False))
    assert "every order ended as expected" in out
    with ov.Client(url) as client:
        results = sorted(str(i.result) for i in client.instances())
    assert results == ["None", "cancelled", "out_of_stock", "shipped"]
