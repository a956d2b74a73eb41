"""Review of round 1: making the push connection pool loads the CA bundle once, not once
per connection or shard: it runs on the event loop whenever a Worker with push tasks is
made, and (25 shards of httpx transports, each loading it) blocked the loop for 0.6 to
2 s on the test machine, long enough for the leases of the attempts other workers on
that loop were running to run out. The client is aiohttp now, with one TLS context."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

import overture as ov
from overture.codec import Codec
from overture.push import PushExecutor, PushOptions


async def test_the_pool_loads_the_ca_bundle_once_and_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    app = ov.App("shop")
    app.task("pay", url="https://pay.example/authorize", secret_env="S")
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    options = PushOptions(max_connections=100)
    async with PushExecutor(app.tasks, Codec(app), options=options, environ={"S": secret}) as ex:
        session = ex._open()
        assert session is ex._open(), "one session for every push"
        assert len(loads) == 1
        tls = ex._tls
        assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
