"""The node directory read: every online node's capabilities, load and reservations, in bulk.

Each instance refreshes its in-memory node snapshot (``nodes.snapshot``) from this about once a
second, so it is built for many nodes: two pipelined passes, each grouped per cluster node by
redis-py's cluster pipeline and sent to the primaries in parallel. Selection ranks from it; it
may be stale, and ``slot_reserve`` stays the authority.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.nodes import NodeCaps, NodeLoad
from hotstate.scripts import bounded


@dataclass(frozen=True)
class NodeView:
    """One online node as the snapshot saw it.

    ``live``: reservations not expired at read time (by this process's clock; only ranks).
    ``unavailable``: service marks (``id`` or ``id@version``) -> expiry, epoch ms.
    """

    node_id: str
    channel: str
    caps: NodeCaps
    load: NodeLoad
    drained: bool
    live: int = 0
    unavailable: Mapping[str, int] = field(default_factory=dict)
    updated_ms: int = 0

    @classmethod
    def registered(
        cls, *, node_id: str, channel: str, caps: NodeCaps, load: NodeLoad, drained: bool = False
    ) -> NodeView:
        """The view of a node this instance just registered, before the next read."""
        return cls(
            node_id=node_id,
            channel=channel,
            caps=caps,
            load=load,
            drained=drained,
            updated_ms=int(time.time() * 1000),
        )


def _number(value: str | None) -> float | None:
    return float(value) if value else None


async def node_directory_read(*, client: RedisCluster | None = None) -> list[NodeView]:
    """Read every online node.

    1. List the directory shards (one pipeline).
    2. For every listed node read presence, caps, live reservations and unexpired marks (one
       pipeline of four commands per node).
    3. Keep the nodes with both presence and caps; a directory entry without them is a node
       that went offline (``node_directory_prune`` removes those entries later).
    """
    cluster = client or get_client()
    pipe = cluster.pipeline(transaction=False)
    for directory in keys.node_directories():
        pipe.zrange(directory, 0, -1)
    listings: list[list[str]] = await bounded("node_directory_read", cluster, pipe.execute())
    node_ids = sorted({node_id for listing in listings for node_id in listing})
    if not node_ids:
        return []
    now_ms = int(time.time() * 1000)
    pipe = cluster.pipeline(transaction=False)
    for node_id in node_ids:
        pipe.get(keys.node_presence(node_id))
        pipe.hgetall(keys.node_caps(node_id))
        pipe.zcount(keys.node_reservations(node_id), f"({now_ms}", "+inf")
        pipe.zrangebyscore(keys.node_unavailable(node_id), f"({now_ms}", "+inf", withscores=True)
    replies = await bounded("node_directory_read", cluster, pipe.execute())
    views = []
    for index, node_id in enumerate(node_ids):
        channel, caps, live, marks = replies[4 * index : 4 * index + 4]
        if not channel or not caps or "max_jobs" not in caps:
            continue
        views.append(
            NodeView(
                node_id=node_id,
                channel=channel,
                caps=NodeCaps.from_fields(caps),
                load=NodeLoad(
                    cpu_pct=_number(caps.get("cpu_pct")) or 0.0,
                    mem_pct=_number(caps.get("mem_pct")) or 0.0,
                    gpu_pct=_number(caps.get("gpu_pct")),
                ),
                drained=caps.get("drained") == "1",
                live=int(live),
                unavailable={mark: int(expiry) for mark, expiry in marks},
                updated_ms=int(caps.get("updated_ms") or 0),
            )
        )
    return views
