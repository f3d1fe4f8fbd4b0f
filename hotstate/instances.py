"""Scheduler instances and the leader lock of periodic duties.

* Instance presence: each scheduler process keeps a key with a TTL while it runs (the heartbeat
  duty and the readiness probe register it) and deletes it when it drains.
* Leader lock: the one process that performs a periodic duty (the directory prune) holds the
  duty's lock; SET NX PX decides among contenders, and acquiring again extends the holder's TTL.
"""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded


async def instance_register(
    *, instance_id: str, ttl_ms: int, started_ms: int = 0, client: RedisCluster | None = None
) -> bool:
    """Mark the instance alive for ``ttl_ms``; True if it was not alive before (new or lapsed)."""
    reply = await SCRIPTS.call(
        "instance_register",
        keys=[keys.instance_presence(instance_id)],
        args=[started_ms, ttl_ms],
        client=client,
        subject=instance_id,
    )
    return reply.code is Code.REGISTERED


async def instance_unregister(*, instance_id: str, client: RedisCluster | None = None) -> None:
    """Drop the instance's presence at shutdown (only the instance itself writes this key)."""
    cluster = client or get_client()
    await bounded(
        "instance_unregister", cluster, cluster.delete(keys.instance_presence(instance_id))
    )


async def leader_acquire(
    *, duty: str, token: str, ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """Lead ``duty`` if nobody does (or we already do: the TTL is extended)."""
    reply = await SCRIPTS.call(
        "leader_acquire",
        keys=[keys.leader_lock(duty)],
        args=[token, ttl_ms],
        client=client,
        subject=duty,
    )
    return reply.code is Code.ACQUIRED
