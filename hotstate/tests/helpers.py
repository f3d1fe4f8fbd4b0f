"""Small builders shared by the hot-state tests and their worker processes."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

from hotstate import nodes
from hotstate.jobs import job_create

LOAD = nodes.NodeLoad(cpu_pct=10.0, mem_pct=20.0)


def caps(max_jobs: int = 2, **services: list[str]) -> nodes.NodeCaps:
    return nodes.NodeCaps(
        max_jobs=max_jobs,
        node_version="1.0",
        services=services or {"asr": ["v1", "v2"]},
        features=["gpu"],
        region="eu",
    )


async def online_node(
    client: RedisCluster, node_id: str, *, max_jobs: int = 2, channel: str | None = None
) -> str:
    """Register a node serving asr v1/v2; return the channel that holds it."""
    channel = channel or f"chan-{node_id}"
    await nodes.node_publish(
        node_id=node_id,
        channel=channel,
        caps=caps(max_jobs),
        load=LOAD,
        register=True,
        client=client,
    )
    return channel


async def new_job(
    client: RedisCluster, job_id: str, *, tenant: str = "acme", session_id: str = "s1"
) -> None:
    await job_create(
        job_id=job_id,
        tenant=tenant,
        request_id=f"req-{job_id}",
        session_id=session_id,
        service_id="asr",
        service_version=None,
        features=[],
        payload_json='{"audio": "x"}',
        timeout_ms=60_000,
        client=client,
    )
