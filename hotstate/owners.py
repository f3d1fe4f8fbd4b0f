"""Who holds what: socket owners, instance presence and leader locks.

* Owner keys map a node or session to the channel of the consumer that holds its socket
  (``owner_get`` reads one).
* Instance presence keys say which scheduler processes are alive, so that senders can skip
  dead ones.
* A leader lock elects the one process that performs a periodic duty; acquiring again extends
  the holder's TTL.
"""

from __future__ import annotations

from enum import StrEnum

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded


class OwnerKind(StrEnum):
    NODE = "node"
    SESSION = "session"


def _owner_key(kind: OwnerKind, entity_id: str) -> str:
    return keys.node_owner(entity_id) if kind is OwnerKind.NODE else keys.session_owner(entity_id)


async def owner_get(
    *, kind: OwnerKind, entity_id: str, client: RedisCluster | None = None
) -> str | None:
    """The channel holding the socket now, or None."""
    cluster = client or get_client()
    value = await bounded("owner_get", cluster, cluster.get(_owner_key(kind, entity_id)))
    return str(value) if value else None


# --- instances ----------------------------------------------------------------------------------


async def instance_register(
    *, instance_id: str, ttl_ms: int, started_ms: int = 0, client: RedisCluster | None = None
) -> bool:
    """Mark the instance alive for ``ttl_ms``; True if it was not alive before (new or lapsed)."""
    reply = await SCRIPTS.call(
        "register_instance",
        keys=[keys.instance_presence(instance_id)],
        args=[started_ms, ttl_ms],
        client=client,
        subject=instance_id,
    )
    return reply.code is Code.REGISTERED


async def instance_renew(
    *, instance_id: str, ttl_ms: int, started_ms: int = 0, client: RedisCluster | None = None
) -> bool:
    """Keep the instance alive; False if its presence had lapsed (peers may have pruned it)."""
    return not await instance_register(
        instance_id=instance_id, ttl_ms=ttl_ms, started_ms=started_ms, client=client
    )


async def instance_alive(*, instance_id: str, client: RedisCluster | None = None) -> bool:
    cluster = client or get_client()
    found: int = await bounded(
        "instance_alive", cluster, cluster.exists(keys.instance_presence(instance_id))
    )
    return found == 1


async def instance_unregister(*, instance_id: str, client: RedisCluster | None = None) -> None:
    """Drop the instance's presence at shutdown (only the instance itself writes this key)."""
    cluster = client or get_client()
    await bounded(
        "instance_unregister", cluster, cluster.delete(keys.instance_presence(instance_id))
    )


# --- leader locks -------------------------------------------------------------------------------


async def leader_acquire(
    *, duty: str, token: str, ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """Lead ``duty`` if nobody does (or we already do: the TTL is extended)."""
    reply = await SCRIPTS.call(
        "acquire_leader",
        keys=[keys.leader_lock(duty)],
        args=[token, ttl_ms],
        client=client,
        subject=duty,
    )
    return reply.code is Code.ACQUIRED


async def leader_get(*, duty: str, client: RedisCluster | None = None) -> str | None:
    """The token of the current leader of ``duty``, or None."""
    cluster = client or get_client()
    value = await bounded("leader_get", cluster, cluster.get(keys.leader_lock(duty)))
    return str(value) if value else None
