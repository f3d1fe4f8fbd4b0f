"""Deleting a test's own keys from the real cluster: the one clean-up every test uses.

Isolation comes from names (docs/development.md, Tests): each test, module or deployment writes
under prefixes of its own, and deletes exactly the keys under them afterwards, found with SCAN
on every primary. Nothing else is ever deleted, so runs sharing the cluster never disturb each
other.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio.cluster import RedisCluster

from hotstate.client import build_client


async def delete_keys(client: RedisCluster, *prefixes: str) -> int:
    """Delete every key under each of ``prefixes`` (``<prefix>:*``); how many were deleted."""
    deleted = 0
    for prefix in prefixes:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            deleted += await client.delete(key)
    return deleted


def delete_keys_sync(url: str, *prefixes: str) -> int:
    """``delete_keys`` for code that is not async (module fixtures, tests that spawn processes).

    It runs on a loop and a client of its own, in a thread of its own, so it works whether or
    not the calling thread runs an event loop.
    """

    async def run() -> int:
        client = build_client(url)
        try:
            return await delete_keys(client, *prefixes)
        finally:
            await client.aclose()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delete-keys") as pool:
        return pool.submit(asyncio.run, run()).result()
