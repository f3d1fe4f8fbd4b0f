"""Cluster health, as /healthz reports it and /readyz judges it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio.cluster import RedisCluster

from hotstate.client import get_client
from hotstate.errors import UNAVAILABLE_ERRORS

SLOT_COUNT = 16384


@dataclass(frozen=True)
class ClusterHealth:
    ok: bool
    reason: str
    details: dict[str, object] = field(default_factory=dict)


async def cluster_health(
    *, client: RedisCluster | None = None, within: float = 2.0
) -> ClusterHealth:
    """Whether the cluster can serve every slot now.

    1. Ask one node for CLUSTER INFO: the state must be ok and every slot assigned and ok.
    2. PING every primary: a slot owner we cannot reach is as bad as an uncovered slot.
    The whole check is bounded by ``within`` seconds; it never raises for an unavailable cluster.
    """
    client = client or get_client()
    try:
        async with asyncio.timeout(within):
            info = await client.execute_command("CLUSTER INFO", target_nodes=RedisCluster.RANDOM)
            state = str(info.get("cluster_state"))
            slots_ok = int(info.get("cluster_slots_ok", 0))
            details: dict[str, object] = {
                "cluster_state": state,
                "slots_ok": slots_ok,
                "known_nodes": int(info.get("cluster_known_nodes", 0)),
            }
            if state != "ok":
                return ClusterHealth(False, f"cluster_state is {state}", details)
            if slots_ok != SLOT_COUNT:
                return ClusterHealth(False, f"only {slots_ok} of {SLOT_COUNT} slots ok", details)
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
    except TimeoutError:
        return ClusterHealth(False, f"Redis Cluster did not answer within {within:g} s")
    except UNAVAILABLE_ERRORS as exc:
        return ClusterHealth(False, f"Redis Cluster unreachable: {type(exc).__name__}: {exc}")
    return ClusterHealth(True, "ok", details)
