"""The asyncio Redis Cluster client, built from settings, one per event loop.

redis-py's asyncio connections belong to the loop that opened them, so a client is cached per
running loop: daphne has one loop per process, while tests and ``async_to_sync`` may create more
(``async_to_sync`` makes a new loop for every call). A loop's client is closed when the loop
closes: ``loop.close`` is wrapped, as channels_redis does, so that it first closes the client on
the loop (which has stopped by then), and no call leaves its connections open.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from django.conf import settings
from redis.asyncio.cluster import RedisCluster

logger = logging.getLogger(__name__)

# Set on a loop whose close() closes its client first.
_WRAPPED = "_hotstate_closes_client"

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
    """The client of the running event loop, created on first use, closed with the loop."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = build_client()
        _clients[loop] = client
        _close_with(loop)
    return client


async def close_client() -> None:
    """Close the running loop's client, if any (tests and shutdown)."""
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()


def _close_with(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap ``loop.close`` so that it first closes the loop's client (once per loop)."""
    if getattr(loop, _WRAPPED, False):
        return
    try:
        setattr(loop, _WRAPPED, True)
    except AttributeError:  # a loop without instance attributes (uvloop): no hook
        return
    original = loop.close

    def close() -> None:
        # A running loop refuses to close (the original raises); a closed one has nothing left;
        # and a loop closed from inside another one cannot run the close.
        if not loop.is_running() and not loop.is_closed() and not _in_a_loop():
            try:
                loop.run_until_complete(close_client())
            except (Exception, asyncio.CancelledError):
                logger.exception("closing the Redis client with its event loop failed")
        original()

    setattr(loop, "close", close)  # noqa: B010 (mypy forbids assigning to a method)


def _in_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
