"""Socket owners, instance presence and leader locks: only the holder renews or clears."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate.owners import (
    OwnerKind,
    instance_alive,
    instance_register,
    instance_renew,
    instance_unregister,
    leader_acquire,
    leader_get,
    leader_release,
    leader_renew,
    owner_clear,
    owner_get,
    owner_renew,
    owner_set,
)


async def test_the_newest_connection_owns_the_socket_and_learns_the_previous(
    hot: RedisCluster,
) -> None:
    for kind in OwnerKind:
        first = await owner_set(kind=kind, entity_id="e1", channel="a", ttl_ms=5000, client=hot)
        second = await owner_set(kind=kind, entity_id="e1", channel="b", ttl_ms=5000, client=hot)
        again = await owner_set(kind=kind, entity_id="e1", channel="b", ttl_ms=5000, client=hot)
        assert (first, second, again) == (None, "a", None)
        assert await owner_get(kind=kind, entity_id="e1", client=hot) == "b"


async def test_a_replaced_owner_can_neither_renew_nor_clear(hot: RedisCluster) -> None:
    kind = OwnerKind.SESSION
    await owner_set(kind=kind, entity_id="s1", channel="old", ttl_ms=5000, client=hot)
    await owner_set(kind=kind, entity_id="s1", channel="new", ttl_ms=5000, client=hot)
    assert not await owner_renew(kind=kind, entity_id="s1", channel="old", ttl_ms=9, client=hot)
    assert not await owner_clear(kind=kind, entity_id="s1", channel="old", client=hot)
    assert await owner_get(kind=kind, entity_id="s1", client=hot) == "new"
    assert await owner_renew(kind=kind, entity_id="s1", channel="new", ttl_ms=5000, client=hot)
    assert await owner_clear(kind=kind, entity_id="s1", channel="new", client=hot)
    assert await owner_get(kind=kind, entity_id="s1", client=hot) is None


async def test_an_expired_owner_is_not_brought_back_by_renew(hot: RedisCluster) -> None:
    kind = OwnerKind.NODE
    await owner_set(kind=kind, entity_id="n1", channel="c", ttl_ms=50, client=hot)
    await asyncio.sleep(0.1)
    assert not await owner_renew(kind=kind, entity_id="n1", channel="c", ttl_ms=5000, client=hot)
    assert await owner_get(kind=kind, entity_id="n1", client=hot) is None


async def test_instance_presence_registers_renews_and_lapses(hot: RedisCluster) -> None:
    assert await instance_register(instance_id="i1", ttl_ms=100, client=hot)
    assert await instance_renew(instance_id="i1", ttl_ms=100, client=hot)
    assert await instance_alive(instance_id="i1", client=hot)
    await asyncio.sleep(0.15)
    assert not await instance_alive(instance_id="i1", client=hot)
    # Renewing after a lapse re-registers and says so.
    assert not await instance_renew(instance_id="i1", ttl_ms=5000, client=hot)
    assert await instance_alive(instance_id="i1", client=hot)
    await instance_unregister(instance_id="i1", client=hot)
    assert not await instance_alive(instance_id="i1", client=hot)


async def test_one_leader_among_many_contenders(hot: RedisCluster) -> None:
    wins = await asyncio.gather(
        *(leader_acquire(duty="stats", token=f"p{i}", ttl_ms=5000, client=hot) for i in range(50))
    )
    assert sum(wins) == 1
    leader = await leader_get(duty="stats", client=hot)
    assert leader == f"p{wins.index(True)}"
    # Re-acquiring is harmless for the leader; others still lose.
    assert await leader_acquire(duty="stats", token=leader, ttl_ms=5000, client=hot)
    assert not await leader_acquire(duty="stats", token="intruder", ttl_ms=5000, client=hot)


async def test_only_the_leader_renews_or_releases(hot: RedisCluster) -> None:
    await leader_acquire(duty="prune", token="a", ttl_ms=5000, client=hot)
    assert not await leader_renew(duty="prune", token="b", ttl_ms=5000, client=hot)
    assert not await leader_release(duty="prune", token="b", client=hot)
    assert await leader_renew(duty="prune", token="a", ttl_ms=5000, client=hot)
    assert await leader_release(duty="prune", token="a", client=hot)
    assert await leader_acquire(duty="prune", token="b", ttl_ms=5000, client=hot)


async def test_a_lapsed_leader_cannot_renew_after_another_took_over(hot: RedisCluster) -> None:
    await leader_acquire(duty="prune", token="slow", ttl_ms=50, client=hot)
    await asyncio.sleep(0.1)
    assert await leader_acquire(duty="prune", token="fast", ttl_ms=5000, client=hot)
    assert not await leader_renew(duty="prune", token="slow", ttl_ms=5000, client=hot)
    assert not await leader_release(duty="prune", token="slow", client=hot)
    assert await leader_get(duty="prune", client=hot) == "fast"
