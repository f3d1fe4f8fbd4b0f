"""Losing Redis surfaces as DependencyDown within a bounded time, never as a hang."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from hotstate.client import build_client
from hotstate.directory import node_directory_read
from hotstate.errors import DependencyDown
from hotstate.jobs import job_get, request_claim
from hotstate.slots import slot_reserve
from tests.support.ports import free_port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


async def test_a_dead_cluster_raises_dependency_down_at_once() -> None:
    client = build_client(f"redis://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(DependencyDown, match="request_claim"):
        await request_claim(tenant="a", request_id="r", job_id="j", lease_ms=1000, client=client)
    with pytest.raises(DependencyDown):
        await node_directory_read(client=client)
    assert time.monotonic() - started < 3.0
    await client.aclose()


async def test_a_server_that_never_answers_raises_dependency_down_within_the_bound(
    silent_port: int, settings
) -> None:
    settings.REDIS_CONNECT_TIMEOUT = 0.2
    settings.REDIS_SOCKET_TIMEOUT = 0.5
    client = build_client(f"redis://127.0.0.1:{silent_port}")
    for call in (
        slot_reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=client),
        job_get(job_id="j1", client=client),
    ):
        started = time.monotonic()
        with pytest.raises(DependencyDown):
            await call
        # REDIS_SOCKET_TIMEOUT bounds the whole call, retries included.
        assert time.monotonic() - started < 1.5
    await client.aclose()
