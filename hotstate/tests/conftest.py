"""Hot-state test fixtures: each test gets its own key prefix on the real cluster.

A per-test ``HOTSTATE_PREFIX`` makes every key the test touches its own, including the sharded
keys that production shares (directory shards, MNA streams). Teardown deletes exactly the keys
under that prefix, found with SCAN on every primary.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from conftest import delete_keys


def free_port() -> int:
    """A local port nobody listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def hot(redis: RedisCluster, settings, unique_tag: str) -> AsyncIterator[RedisCluster]:
    """The cluster client, with HOTSTATE_PREFIX set to a prefix of this test's own."""
    prefix = f"test-{unique_tag}"
    settings.HOTSTATE_PREFIX = prefix
    yield redis
    await delete_keys(redis, prefix)
