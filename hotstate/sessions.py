"""Client sessions: who owns the socket, resume within SESSION_RESUME_TTL, the result outbox.

A session is three keys in its own slot: a record (tenant, created_ms, closed_ms), the owner
key (the channel of the consumer holding its socket) and an outbox of final results. All three
live ``resume_ttl_ms`` past the last renewal or close, so a session that disconnects can be
resumed on any instance within that time and receive what finished while it was away. A
result goes through the outbox even when the session is connected: ``put`` stores it once
(HSETNX), ``take`` hands it to exactly one socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.codes import Code
from hotstate.scripts import SCRIPTS, bounded


async def session_start(
    *,
    session_id: str,
    tenant: str,
    channel: str,
    resume_ttl_ms: int,
    client: RedisCluster | None = None,
) -> bool:
    """Create the session owned by ``channel``; False if the id already exists (draw another)."""
    reply = await SCRIPTS.call(
        "session_start",
        keys=[keys.session_record(session_id), keys.session_owner(session_id)],
        args=[tenant, channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.OPENED


@dataclass(frozen=True, slots=True)
class Resumed:
    """``resumed``: the session is now ``channel``'s; ``previous_channel``: socket to close."""

    resumed: bool
    previous_channel: str | None


async def session_resume(
    *,
    session_id: str,
    tenant: str,
    channel: str,
    resume_ttl_ms: int,
    client: RedisCluster | None = None,
) -> Resumed:
    """Reopen a live or recently closed session of ``tenant``; unknown or foreign: not resumed."""
    reply = await SCRIPTS.call(
        "session_resume",
        keys=[
            keys.session_record(session_id),
            keys.session_owner(session_id),
            keys.session_outbox(session_id),
        ],
        args=[tenant, channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    previous = reply.text(0)
    return Resumed(
        resumed=reply.code is Code.RESUMED,
        previous_channel=previous if previous and previous != channel else None,
    )


async def session_close(
    *, session_id: str, channel: str, resume_ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """``channel``'s socket closed: keep the session resumable; False if it was not the owner."""
    reply = await SCRIPTS.call(
        "session_close",
        keys=[
            keys.session_record(session_id),
            keys.session_owner(session_id),
            keys.session_outbox(session_id),
        ],
        args=[channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.CLOSED


async def session_renew(
    *, session_id: str, channel: str, resume_ttl_ms: int, client: RedisCluster | None = None
) -> bool:
    """Extend the session while ``channel`` owns it; False: another socket took it over."""
    reply = await SCRIPTS.call(
        "session_renew",
        keys=[
            keys.session_record(session_id),
            keys.session_owner(session_id),
            keys.session_outbox(session_id),
        ],
        args=[channel, resume_ttl_ms],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.RENEWED


async def session_owner_get(*, session_id: str, client: RedisCluster | None = None) -> str | None:
    """The channel holding the session's socket now, or None (closed or expired)."""
    cluster = client or get_client()
    value = await bounded("session_owner_get", cluster, cluster.get(keys.session_owner(session_id)))
    return str(value) if value else None


async def session_result_put(
    *, session_id: str, job_id: str, frame_json: str, client: RedisCluster | None = None
) -> bool:
    """Store a final result for the session, once; True if stored now."""
    reply = await SCRIPTS.call(
        "session_result_put",
        keys=[keys.session_record(session_id), keys.session_outbox(session_id)],
        args=[job_id, frame_json],
        client=client,
        subject=session_id,
    )
    return reply.code is Code.STORED


async def session_results_pending(
    *, session_id: str, client: RedisCluster | None = None
) -> list[str]:
    """Job ids whose results wait in the outbox (not yet taken)."""
    cluster = client or get_client()
    outbox = await bounded(
        "session_results_pending", cluster, cluster.hgetall(keys.session_outbox(session_id))
    )
    return sorted(str(job_id) for job_id, frame in outbox.items() if frame)


async def session_result_take(
    *, session_id: str, job_id: str, client: RedisCluster | None = None
) -> str | None:
    """Take a waiting result frame; exactly one caller gets it, the others None."""
    reply = await SCRIPTS.call(
        "session_result_take",
        keys=[keys.session_outbox(session_id)],
        args=[job_id],
        client=client,
        subject=session_id,
    )
    return reply.text(0) if reply.code is Code.TAKEN else None
