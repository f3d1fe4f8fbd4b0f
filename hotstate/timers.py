"""Job timers: one next-check time per job, claimed by any instance when due.

Ack timeouts, job deadlines, lost-node checks and re-dispatch all arm the job's one timer; the
job services decide what the check does. Timers live in sharded sorted sets (job_id -> due ms),
so no single key takes every instance's claims. Due times are the arming caller's clock, and
``timers_claim`` takes ``now_ms`` from the same family of clocks (the scheduler processes'):
a skew between instances shifts a timer by that skew, never loses it.
"""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.client import get_client
from hotstate.scripts import SCRIPTS

TIMER_LEASE_MS = 10_000


async def timer_arm(*, job_id: str, due_ms: int, client: RedisCluster | None = None) -> None:
    """Set the job's next check to ``due_ms`` (replacing any earlier one)."""
    await SCRIPTS.call(
        "timer_arm",
        keys=[keys.timers_of(job_id)],
        args=[job_id, due_ms],
        client=client,
        subject=job_id,
    )


async def timer_disarm(*, job_id: str, client: RedisCluster | None = None) -> bool:
    """Remove the job's timer; True if one was armed."""
    reply = await SCRIPTS.call(
        "timer_disarm",
        keys=[keys.timers_of(job_id)],
        args=[job_id],
        client=client,
        subject=job_id,
    )
    return reply.number(0) == 1


async def timers_claim(
    *,
    now_ms: int,
    limit: int,
    lease_ms: int = TIMER_LEASE_MS,
    client: RedisCluster | None = None,
) -> list[str]:
    """Claim due timers from every shard (up to ``limit`` each) for ``lease_ms``.

    The caller checks each job and re-arms or disarms it; a job it does neither for comes back
    after the lease.
    """
    cluster = client or get_client()
    replies = await asyncio.gather(
        *(
            SCRIPTS.call(
                "timers_claim", keys=[shard], args=[now_ms, limit, lease_ms], client=cluster
            )
            for shard in keys.timer_shards()
        )
    )
    return [str(job_id) for reply in replies for job_id in reply.values]
