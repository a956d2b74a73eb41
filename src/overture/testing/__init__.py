"""Test helpers shipped with Overture: a virtual clock and an in-process engine harness.

Example::

    async with ov.testing.Harness(app, clock=ov.testing.VirtualClock()) as h:
        h.client.send(OrderPlaced(order_id="o1", item="book", quantity=1))
        await h.idle()
        h.clock.advance(1800)          # skip 30 minutes of durable timers
        await h.idle()
        assert h.client.instances()[0].status == "completed"
"""

from __future__ import annotations

import dataclasses
import uuid
from types import TracebackType
from typing import Unpack

from ..app import App
from ..backends import open_backend, renamed_broker
from ..client import Client
from ..codec import Codec
from ..ports import Backend
from ..runtime.clock import SystemClock, VirtualClock
from ..runtime.engine import Engine, EngineKeywords
from ..runtime.host import Host
from ..runtime.options import EngineOptions

__all__ = ["Harness", "VirtualClock"]


class Harness:
    """An engine and a client on one backend, driven step by step by a test.

    Args:
        app: the application under test.
        backend: a backend URL; defaults to a fresh ``memory://`` backend.
        clock: defaults to a :class:`VirtualClock`.
        options: how the engines run (``EngineOptions``), e.g. ``cache_size=0`` forces a
            replay on every input.
        codec: the codec of the engines and the client (default: ``Codec(app)``).
        **keywords: options one by one, overriding ``options`` (as for ``Engine``).
    """

    def __init__(
        self,
        app: App,
        backend: str | None = None,
        *,
        clock: VirtualClock | SystemClock | None = None,
        options: EngineOptions | None = None,
        codec: Codec | None = None,
        broker: str | None = None,
        **keywords: Unpack[EngineKeywords],
    ) -> None:
        backend = renamed_broker("Harness", backend, None, broker)
        options = options or EngineOptions()
        if keywords:
            options = dataclasses.replace(options, **keywords)
        self.app = app
        self.url = backend or f"memory://{uuid.uuid4().hex}"
        self.clock = clock if clock is not None else VirtualClock()
        self.options = options
        self.codec = codec
        self.backend: Backend = open_backend(self.url)
        self.client = Client(self.backend, app=app, codec=codec)
        self.host = self._new_host()

    def _new_host(self) -> Host:
        return Host(
            self.app,
            self.backend,
            clock=self.clock,
            options=self.options,
            drive=True,
            codec=self.codec,
        )

    @property
    def engine(self) -> Engine:
        """The engine (on Kafka: of the first partition this process owns)."""
        return self.host.engines[min(self.host.engines)]

    async def idle(self) -> None:
        """Run the engines until nothing is left to do at the current (virtual) time."""
        await self.host.run_until_idle()

    async def advance(self, seconds: float) -> None:
        """Handle what was sent so far at the current time, then move the virtual clock
        forward and run until idle (so an event sent before ``advance`` is never seen
        after a timer that the advance makes due)."""
        if not isinstance(self.clock, VirtualClock):
            raise TypeError("advance() needs a VirtualClock")
        await self.idle()
        self.clock.advance(seconds)
        await self.idle()

    async def restart(self) -> None:
        """Simulate a crash: drop the engines and all their memory (without draining), and
        start fresh ones on the same backend (on Kafka: a new group member that restores
        the state from the changelog)."""
        await self.host.abandon()
        await self.host.close_membership()
        self.host = self._new_host()
        await self.host.start()

    async def __aenter__(self) -> Harness:
        await self.host.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.host.stop(grace=0)
        self.client.close()
        self.backend.close()  # (a memory:// backend keeps its data: close releases nothing)
