"""The asyncio Redis Cluster client, built from settings, one per event loop.

redis-py's asyncio connections belong to the loop that opened them, so a client is cached per
running loop: daphne has one loop per process, while tests and ``async_to_sync`` may create more.
"""

from __future__ import annotations

import asyncio
import weakref

from django.conf import settings
from redis.asyncio.cluster import RedisCluster

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisCluster] = (
    weakref.WeakKeyDictionary()
)


def build_client(url: str | None = None) -> RedisCluster:
    """A new client for ``url`` (default ``REDIS_CLUSTER_URL``) with bounded timeouts."""
    return RedisCluster.from_url(
        url or settings.REDIS_CLUSTER_URL,
        decode_responses=True,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
    )


def get_client() -> RedisCluster:
    """The client of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = build_client()
        _clients[loop] = client
    return client


async def close_client() -> None:
    """Close the running loop's client, if any (tests and shutdown)."""
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
