"""The per-loop cluster client: it goes when its event loop closes."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from hotstate import client
from tests.support.connections import connections_to


def test_async_to_sync_calls_leave_no_client_behind(redis_cluster_url: str, settings) -> None:
    settings.REDIS_CLUSTER_URL = redis_cluster_url

    async def ping() -> None:
        await client.get_client().ping()

    async_to_sync(ping)()  # the first loop of this process: baseline
    before = connections_to(redis_cluster_url)
    for _ in range(20):
        async_to_sync(ping)()
    after = connections_to(redis_cluster_url)
    assert after <= before, f"{after - before} connections left open by 20 calls"
    assert len(client._clients) == 0
