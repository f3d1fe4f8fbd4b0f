"""Fixtures shared by every app's tests: the real local Redis Cluster and real daphne processes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate.client import build_client
from hotstate.localcluster import from_environment
from tests.e2e.harness.deployment import System, migrated_database
from tests.support.keys import delete_keys, delete_keys_sync


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """Start (or reuse) the local cluster once per test run and wait until it serves every slot."""
    cluster = from_environment()
    cluster.start()
    return cluster.url


@pytest.fixture
async def redis(redis_cluster_url: str, settings) -> AsyncIterator[RedisCluster]:
    """A client of the real cluster for this test's loop. Tests name keys with ``unique_tag``."""
    client = build_client(redis_cluster_url)
    yield client
    await client.aclose()


@pytest.fixture
def unique_tag() -> str:
    """A random suffix so each test's keys are its own and never collide with another run."""
    return f"t{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def e2e_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test run; every end-to-end system starts from a copy."""
    return migrated_database(tmp_path_factory.mktemp("e2e-template"))


@pytest.fixture
def daphne_factory(
    tmp_path: Path, redis_cluster_url: str, e2e_template_db: Path
) -> Iterator[Callable[..., System]]:
    """Start real daphne processes, each a ``System`` of its own (``tests/e2e/harness``) with
    extra environment, returned once it answers ``/healthz``, ready or not. All are stopped,
    and their keys deleted, after the test."""
    started: list[System] = []

    def factory(**env: str) -> System:
        system = System(
            tmp_path / f"daphne-{len(started)}", redis_cluster_url, e2e_template_db, env
        )
        started.append(system)
        system.start_instances("daphne", ready=False)
        return system

    yield factory
    for system in started:
        system.close()


@pytest.fixture
async def hot(redis: RedisCluster, settings, unique_tag: str) -> AsyncIterator[RedisCluster]:
    """The cluster client, with ``HOTSTATE_PREFIX`` set to a prefix of this test's own.

    Every key the test touches is its own, including the sharded keys that production shares
    (directory shards, MNA streams); the keys under the prefix are deleted after the test.
    """
    prefix = f"test-{unique_tag}"
    settings.HOTSTATE_PREFIX = prefix
    yield redis
    await delete_keys(redis, prefix)


@pytest.fixture
def hot_prefix(redis_cluster_url: str, settings, unique_tag: str) -> Iterator[str]:
    """``hot`` for a test that is not async (it spawns processes, or drives hypothesis or
    Django's test client): the prefix, set as ``HOTSTATE_PREFIX``; its keys are deleted after."""
    prefix = f"test-{unique_tag}"
    settings.HOTSTATE_PREFIX = prefix
    yield prefix
    delete_keys_sync(redis_cluster_url, prefix)


@pytest.fixture
async def scheduler(hot: RedisCluster, settings) -> AsyncIterator[object]:
    """A scheduler process of this test's own, in this test's loop.

    Its hot state lives under the key prefix of ``hot`` (so no other test or running server sees
    its nodes), its node snapshot starts empty, its channel layer is in-memory, and its
    background duties are stopped afterwards, before ``hot`` deletes its keys.
    """
    from channels.layers import channel_layers

    from core.runtime import runtime_get, runtime_peek
    from core.state import STATE
    from hotstate.client import close_client
    from tests.support.inprocess import close_peers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    STATE.reset()
    await close_client()
    yield runtime_get()
    await close_peers()
    runtime = runtime_peek()
    if runtime is not None:
        await runtime.stop()
    await close_client()
    STATE.reset()
    channel_layers.backends.clear()
