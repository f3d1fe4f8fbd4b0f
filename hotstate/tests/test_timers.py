"""Job timers: armed per job, claimed once when due, back after the lease if not handled."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate.timers import timer_arm, timer_disarm, timers_claim


async def test_only_due_timers_are_claimed(hot: RedisCluster) -> None:
    await timer_arm(job_id="due", due_ms=1000, client=hot)
    await timer_arm(job_id="later", due_ms=5000, client=hot)
    assert await timers_claim(now_ms=2000, limit=10, client=hot) == ["due"]


async def test_a_due_timer_goes_to_one_claimer(hot: RedisCluster) -> None:
    job_ids = [f"j{i}" for i in range(40)]
    for job_id in job_ids:
        await timer_arm(job_id=job_id, due_ms=1000, client=hot)
    claims = await asyncio.gather(
        *(timers_claim(now_ms=2000, limit=100, client=hot) for _ in range(5))
    )
    claimed = [job_id for claim in claims for job_id in claim]
    assert sorted(claimed) == sorted(job_ids)


async def test_a_claimed_timer_comes_back_after_its_lease(hot: RedisCluster) -> None:
    await timer_arm(job_id="j1", due_ms=1000, client=hot)
    assert await timers_claim(now_ms=2000, limit=10, lease_ms=500, client=hot) == ["j1"]
    assert await timers_claim(now_ms=2400, limit=10, lease_ms=500, client=hot) == []
    assert await timers_claim(now_ms=2500, limit=10, lease_ms=500, client=hot) == ["j1"]


async def test_rearm_replaces_and_disarm_removes(hot: RedisCluster) -> None:
    await timer_arm(job_id="j1", due_ms=1000, client=hot)
    await timer_arm(job_id="j1", due_ms=9000, client=hot)
    assert await timers_claim(now_ms=2000, limit=10, client=hot) == []
    assert await timer_disarm(job_id="j1", client=hot)
    assert not await timer_disarm(job_id="j1", client=hot)
    assert await timers_claim(now_ms=99_999, limit=10, client=hot) == []
