"""Review of round 1: making the push connection pool loads the CA bundle once, not once
per shard (25 by default): it runs on the event loop whenever a Worker with push tasks
is made, and blocked it for 0.6 to 2 s on the test machine, long enough for the leases
of the attempts other workers on that loop were running to run out."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from overture.httppool import ShardedTransport
from overture.push import PushOptions


def test_the_shards_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    httpx.create_ssl_context()
    once = len(loads)
    loads.clear()
    options = PushOptions()
    transport = ShardedTransport(
        max_connections=options.max_connections, max_keepalive=options.max_keepalive
    )
    assert transport.shards > 1
    assert len(loads) == once
