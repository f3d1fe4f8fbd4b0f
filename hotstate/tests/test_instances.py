"""Instance presence and leader locks: one leader per duty, until its lock lapses."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.instances import instance_register, instance_unregister, leader_acquire


async def test_instance_presence_registers_renews_and_lapses(hot: RedisCluster) -> None:
    assert await instance_register(instance_id="i1", ttl_ms=100, client=hot)
    # Registering while alive is a renewal.
    assert not await instance_register(instance_id="i1", ttl_ms=100, client=hot)
    assert await hot.exists(keys.instance_presence("i1")) == 1
    await asyncio.sleep(0.15)
    assert await hot.exists(keys.instance_presence("i1")) == 0
    # Registering after a lapse says so.
    assert await instance_register(instance_id="i1", ttl_ms=5000, client=hot)
    await instance_unregister(instance_id="i1", client=hot)
    assert await hot.exists(keys.instance_presence("i1")) == 0
    assert await instance_register(instance_id="i1", ttl_ms=5000, client=hot)


async def test_one_leader_among_many_contenders(hot: RedisCluster) -> None:
    wins = await asyncio.gather(
        *(leader_acquire(duty="stats", token=f"p{i}", ttl_ms=5000, client=hot) for i in range(50))
    )
    assert sum(wins) == 1
    leader = f"p{wins.index(True)}"
    assert await hot.get(keys.leader_lock("stats")) == leader
    # Re-acquiring is harmless for the leader; others still lose.
    assert await leader_acquire(duty="stats", token=leader, ttl_ms=5000, client=hot)
    assert not await leader_acquire(duty="stats", token="intruder", ttl_ms=5000, client=hot)


async def test_a_lapsed_leader_loses_the_lock_to_the_next_contender(hot: RedisCluster) -> None:
    await leader_acquire(duty="prune", token="slow", ttl_ms=50, client=hot)
    assert not await leader_acquire(duty="prune", token="fast", ttl_ms=5000, client=hot)
    await asyncio.sleep(0.1)
    assert await leader_acquire(duty="prune", token="fast", ttl_ms=5000, client=hot)
    assert not await leader_acquire(duty="prune", token="slow", ttl_ms=5000, client=hot)
    assert await hot.get(keys.leader_lock("prune")) == "fast"
