"""Fixtures shared by every app's tests: the real local Redis Cluster and real daphne processes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate.client import build_client
from hotstate.localcluster import from_environment
from tests.support.keys import delete_keys, delete_keys_sync
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent


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


@dataclass
class DaphneProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daphne(tmp_path: Path, env: dict[str, str] | None = None) -> DaphneProcess:
    """A real daphne serving the project on a free port, ready when it answers /healthz."""
    import urllib.request

    port = free_port()
    log_path = tmp_path / f"daphne-{port}.log"
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "scheduler_project.asgi:application",
        ],
        cwd=ROOT,
        env=full_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return DaphneProcess(url=url, process=process, log_path=log_path)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"daphne did not answer within 30 s:\n{log_path.read_text()}")


def stop_daphne(server: DaphneProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def daphne_factory(tmp_path: Path, redis_cluster_url: str) -> Iterator[object]:
    """Start real daphne processes with extra environment; all are stopped after the test."""
    started: list[DaphneProcess] = []

    def factory(**env: str) -> DaphneProcess:
        server = start_daphne(tmp_path, {"REDIS_CLUSTER_URL": redis_cluster_url, **env})
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_daphne(server)


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
