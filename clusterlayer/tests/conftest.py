"""Layers under test: this layer on the local Redis Cluster, and channels_redis on a standalone
redis-server that these tests start on a free port (never the machine's 6379) and stop after.

Every layer gets a random key prefix, and is flushed and closed after its test, which deletes
every key it made.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer
from redis.asyncio.cluster import RedisCluster

from clusterlayer import ClusterChannelLayer
from clusterlayer.tests.standalone_redis import StandaloneRedis

LayerFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def standalone_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneRedis]:
    server = StandaloneRedis.start(Path(tmp_path_factory.mktemp("standalone-redis")))
    yield server
    server.stop()


@pytest.fixture
async def cluster_layer_factory(
    redis_cluster_url: str, redis: RedisCluster
) -> AsyncIterator[LayerFactory]:
    """Make ClusterChannelLayers sharing one random prefix (so they see each other); after the
    test, flush and close them and check that not one key of the prefix is left."""
    prefix = f"cl-{secrets.token_hex(5)}"
    made: list[ClusterChannelLayer] = []

    def make(**config: Any) -> ClusterChannelLayer:
        layer = ClusterChannelLayer(url=redis_cluster_url, prefix=prefix, **config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
    for layer in made:
        await layer.close()
    left = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    assert left == [], f"keys left behind: {left}"


@pytest.fixture(params=["cluster", "channels_redis"])
async def layer_factory(
    request: pytest.FixtureRequest, cluster_layer_factory: LayerFactory
) -> AsyncIterator[LayerFactory]:
    """The generic contract runs against both layers: instances from one factory call share
    their storage, standing in for separate processes of one deployment."""
    if request.param == "cluster":
        yield cluster_layer_factory
        return
    server: StandaloneRedis = request.getfixturevalue("standalone_redis")
    prefix = f"cr-{secrets.token_hex(5)}:"
    made: list[RedisChannelLayer] = []

    def make(**config: Any) -> RedisChannelLayer:
        layer = RedisChannelLayer(hosts=[server.url], prefix=prefix, **config)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.flush()
