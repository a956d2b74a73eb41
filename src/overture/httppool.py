"""A connection pool for many requests in flight: httpx's transport, split into shards.

httpcore's connection pool (under ``httpx.AsyncClient``, 1.0.x) re-examines every one of
its connections each time a request starts or ends, so its cost per request grows with
the number of connections: measured here, with 64 requests in flight on one pool of 64
connections, pool bookkeeping took 4 to 8 ms of CPU per request and throughput fell to a
sixth of what 4 requests in flight reached. :class:`ShardedTransport` keeps the client's
limits but spreads the connections over small pools (a few connections each) and sends
each request to the least busy one, so every pass of a pool looks at a few connections
only: 1 to 1.5 ms of CPU per request at any concurrency on the same machine.

It is an ``httpx.AsyncBaseTransport``: the caller still uses one ``httpx.AsyncClient``
(timeouts, headers, streaming unchanged), given ``transport=ShardedTransport(...)``.

Rejected: several ``AsyncClient`` objects picked round-robin by the caller (every
caller would repeat the bookkeeping, and round-robin sends a request to a full pool
while another is idle); waiting for an httpcore release with a linear pool (not out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

__all__ = ["SHARD_SIZE", "ShardedTransport"]

SHARD_SIZE = 4
"""Connections per shard: small enough that a pool's pass stays cheap; more shards cost
one comparison each per request."""


class ShardedTransport(httpx.AsyncBaseTransport):
    """At most ``max_connections`` connections (and ``max_keepalive`` idle ones kept),
    spread over shards of :data:`SHARD_SIZE`; a request goes to the shard with the fewest
    requests in flight (queued ones included), and stays counted there until its
    response is closed."""

    def __init__(self, *, max_connections: int, max_keepalive: int) -> None:
        count = -(-max_connections // SHARD_SIZE)
        # One TLS context for all shards: each transport would otherwise load the CA
        # bundle itself (~40 ms each, 25 shards by default: a second of the event loop
        # blocked whenever a Worker with push tasks is made).
        verify = httpx.create_ssl_context()
        self._pools = [
            httpx.AsyncHTTPTransport(
                verify=verify,
                limits=httpx.Limits(
                    max_connections=_share(max_connections, count, i),
                    # at least 1: a shard that keeps no idle connection reconnects for
                    # every request
                    max_keepalive_connections=max(1, _share(max_keepalive, count, i)),
                ),
            )
            for i in range(count)
        ]
        self._busy = [0] * count

    @property
    def shards(self) -> int:
        """How many pools the connections are spread over."""
        return len(self._pools)

    def in_flight(self) -> int:
        """Requests sent or waiting whose response is not closed yet."""
        return sum(self._busy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        busy = self._busy
        shard = busy.index(min(busy))
        busy[shard] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                busy[shard] -= 1

        try:
            response = await self._pools[shard].handle_async_request(request)
        except BaseException:  # cancelled or failed: it holds nothing any more
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, release)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _share(total: int, count: int, index: int) -> int:
    """Shard ``index``'s part of ``total`` split over ``count`` shards (the parts add up
    to ``total`` exactly)."""
    return total // count + (index < total % count)


class _Released(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()
