"""Normal channels: what a consumer read and never acknowledged (it died) is claimed by the
processes still reading, under stable consumer names, and given up as a dead letter after too
many deliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from clusterlayer import keys, streams
from clusterlayer.streams import GROUP
from clusterlayer.tests.conftest import LayerFactory
from clusterlayer.tests.test_contract import assert_nothing_arrives, receive_within
from clusterlayer.tests.test_layer import eventually

CHANNEL = "test.work"


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A client that leaves payloads as bytes (they are msgpack, not text)."""
    client = RedisCluster.from_url(redis_cluster_url)
    yield client
    await client.aclose()


async def read_and_die(raw: RedisCluster, prefix: str, consumer: str) -> list[bytes]:
    """What a receiving process that died between reading and acknowledging leaves: entries
    pending for its consumer name. Returns their ids."""
    stream = keys.channel_stream(prefix, CHANNEL)
    await raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
    response: Any = await raw.xreadgroup(GROUP, consumer, {stream: ">"}, count=100)
    return [entry_id for entry_id, _ in streams.entries(response)]


async def pending_for(redis: RedisCluster, prefix: str) -> dict[str, int]:
    stream = keys.channel_stream(prefix, CHANNEL)
    consumers = await redis.xinfo_consumers(stream, GROUP)
    return {consumer["name"]: int(consumer["pending"]) for consumer in consumers}


async def test_entries_a_dead_consumer_left_pending_are_claimed(
    cluster_layer_factory: LayerFactory, redis: RedisCluster, raw: RedisCluster
) -> None:
    sender = cluster_layer_factory()
    receiver = cluster_layer_factory(claim_idle=0.5, block_timeout=0.2)
    await sender.send(CHANNEL, {"type": "t", "i": 1})
    await sender.send(CHANNEL, {"type": "t", "i": 2})
    assert len(await read_and_die(raw, sender.prefix, "gone-host-1.0")) == 2

    assert (await receive_within(receiver, CHANNEL))["i"] == 1
    assert (await receive_within(receiver, CHANNEL))["i"] == 2
    # While it reads on, the dead consumer (nothing pending, idle) is forgotten by the group.
    await assert_nothing_arrives(receiver, CHANNEL, 1.5)
    assert await pending_for(redis, sender.prefix) == {receiver._process().consumer: 0}


async def test_a_restarted_process_takes_back_its_own_pending_entries_at_once(
    cluster_layer_factory: LayerFactory, redis: RedisCluster, raw: RedisCluster
) -> None:
    """With a stable consumer name, the new incarnation does not wait for ``claim_idle``."""
    sender = cluster_layer_factory()
    await sender.send(CHANNEL, {"type": "t", "i": 1})
    await read_and_die(raw, sender.prefix, "worker-a.0")  # the previous incarnation
    restarted = cluster_layer_factory(consumer_name="worker-a", claim_idle=600)
    assert await receive_within(restarted, CHANNEL) == {"type": "t", "i": 1}
    assert restarted._process().consumer == "worker-a.0"


async def test_an_entry_delivered_too_often_is_dropped_as_a_dead_letter(
    cluster_layer_factory: LayerFactory, redis: RedisCluster, raw: RedisCluster
) -> None:
    """A message that kills every reader: read, then claimed by two more readers that die too;
    a fourth delivery would exceed max_deliveries (3), so it is dropped and counted."""
    sender = cluster_layer_factory()
    receiver = cluster_layer_factory(claim_idle=0.3, block_timeout=0.2, max_deliveries=3)
    await sender.send(CHANNEL, {"type": "t", "i": "poison"})
    await sender.send(CHANNEL, {"type": "t", "i": "fine"})
    poison, _ = await read_and_die(raw, sender.prefix, "gone-host-1.0")
    stream = keys.channel_stream(sender.prefix, CHANNEL)
    for consumer in ("gone-host-2.0", "gone-host-3.0"):
        await raw.xclaim(stream, GROUP, consumer, 0, [poison], idle=60_000)

    assert await receive_within(receiver, CHANNEL) == {"type": "t", "i": "fine"}
    await assert_nothing_arrives(receiver, CHANNEL, 1.0)
    assert await redis.get(keys.dead_letters(sender.prefix, CHANNEL)) == "1"

    async def nothing_pending() -> bool:
        return sum((await pending_for(redis, sender.prefix)).values()) == 0

    await eventually(nothing_pending)
    assert await redis.xlen(stream) == 0
