"""Node presence, capabilities, heartbeats, removal, drain and the sharded directory."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.nodes import (
    HeartbeatOutcome,
    NodeCaps,
    OwnedOutcome,
    PublishOutcome,
    node_channel,
    node_directory_prune,
    node_drain,
    node_heartbeat,
    node_present,
    node_publish,
    node_remove,
    presence_ttl_ms,
)
from hotstate.slots import slot_reserve
from hotstate.tests.helpers import LOAD, caps, online_node


async def test_register_writes_presence_with_three_heartbeats_ttl_and_flat_caps(
    hot: RedisCluster, settings
) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 1000
    published = await node_publish(
        node_id="n1", channel="c1", caps=caps(4), load=LOAD, register=True, client=hot
    )
    assert (published.outcome, published.previous) == (PublishOutcome.CAPS_WRITTEN, None)
    assert await hot.get(keys.node_presence("n1")) == "c1"
    assert 2500 < await hot.pttl(keys.node_presence("n1")) <= 3000 == presence_ttl_ms()
    stored = await hot.hgetall(keys.node_caps("n1"))
    assert stored["max_jobs"] == "4" and stored["drained"] == "0"
    assert stored["svc:asr"] == "v1,v2" and stored["feat:gpu"] == "1" and stored["region"] == "eu"
    assert float(stored["cpu_pct"]) == 10.0 and stored["gpu_pct"] == ""
    assert NodeCaps.from_fields(stored) == NodeCaps(
        max_jobs=4,
        node_version="1.0",
        services={"asr": ("v1", "v2")},
        features=frozenset({"gpu"}),
        region="eu",
    )
    assert await node_present(node_id="n1", client=hot)
    assert await node_channel(node_id="n1", client=hot) == "c1"
    assert "n1" in await hot.zrange(keys.node_directory_of("n1"), 0, -1)


async def test_unchanged_caps_are_not_rewritten(hot: RedisCluster) -> None:
    await online_node(hot, "n1", channel="c1")
    # A field that only a rewrite would drop shows whether the hash was rewritten.
    await hot.hset(keys.node_caps("n1"), "marker", "kept")
    same = await node_publish(
        node_id="n1", channel="c1", caps=caps(2), load=LOAD, register=False, client=hot
    )
    assert same.outcome is PublishOutcome.CAPS_UNCHANGED
    assert await hot.hget(keys.node_caps("n1"), "marker") == "kept"
    changed = await node_publish(
        node_id="n1", channel="c1", caps=caps(2, tts=[]), load=LOAD, register=False, client=hot
    )
    assert changed.outcome is PublishOutcome.CAPS_WRITTEN
    stored = await hot.hgetall(keys.node_caps("n1"))
    assert "marker" not in stored and "svc:asr" not in stored and stored["svc:tts"] == ""


async def test_a_newer_connection_takes_the_node_and_the_old_one_is_fenced(
    hot: RedisCluster,
) -> None:
    await online_node(hot, "n1", channel="old")
    taken = await node_publish(
        node_id="n1", channel="new", caps=caps(), load=LOAD, register=True, client=hot
    )
    assert taken.previous == "old"
    beat = await node_heartbeat(node_id="n1", channel="old", load=LOAD, client=hot)
    update = await node_publish(
        node_id="n1", channel="old", caps=caps(9), load=LOAD, register=False, client=hot
    )
    removed = await node_remove(node_id="n1", channel="old", client=hot)
    assert beat.outcome is HeartbeatOutcome.NOT_OWNER
    assert update.outcome is PublishOutcome.NOT_OWNER
    assert removed is OwnedOutcome.NOT_OWNER
    assert await node_channel(node_id="n1", client=hot) == "new"
    assert await hot.hget(keys.node_caps("n1"), "max_jobs") == "2"


async def test_heartbeat_refreshes_presence_and_load_and_renews_running_jobs(
    hot: RedisCluster, settings
) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 100  # presence lives 300 ms
    settings.RESERVATION_TTL = 1.0
    channel = await online_node(hot, "n1")
    await slot_reserve(
        node_id="n1", job_id="run", attempt=1, service_id="asr", ttl_ms=300, client=hot
    )
    for _ in range(4):
        await asyncio.sleep(0.15)
        beat = await node_heartbeat(
            node_id="n1", channel=channel, load=LOAD, running=["run", "unknown"], client=hot
        )
        assert (beat.outcome, beat.renewed, beat.live) == (HeartbeatOutcome.OK, 1, 1)
    # 600 ms after registering, both presence and the 300 ms reservation are alive.
    assert await node_present(node_id="n1", client=hot)
    assert await hot.zrange(keys.node_reservations("n1"), 0, -1) == ["run"]
    # A job the node runs but that holds no slot is not given one by the heartbeat.
    assert await hot.zscore(keys.node_reservations("n1"), "unknown") is None


async def test_a_silent_node_goes_offline_and_must_register_again(
    hot: RedisCluster, settings
) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 50
    channel = await online_node(hot, "n1")
    await asyncio.sleep(0.2)
    assert not await node_present(node_id="n1", client=hot)
    beat = await node_heartbeat(node_id="n1", channel=channel, load=LOAD, client=hot)
    assert beat.outcome is HeartbeatOutcome.NOT_PRESENT


async def test_removal_on_disconnect_only_by_the_holder(hot: RedisCluster) -> None:
    channel = await online_node(hot, "n1")
    assert await node_remove(node_id="n1", channel=channel, client=hot) is OwnedOutcome.DONE
    assert not await node_present(node_id="n1", client=hot)
    assert await hot.exists(keys.node_caps("n1")) == 0
    again = await node_remove(node_id="n1", channel=channel, client=hot)
    assert again is OwnedOutcome.NOT_PRESENT


async def test_drain_is_kept_across_caps_changes_and_set_by_register(hot: RedisCluster) -> None:
    channel = await online_node(hot, "n1")
    assert await node_drain(node_id="n1", channel=channel, client=hot) is OwnedOutcome.DONE
    await node_publish(
        node_id="n1", channel=channel, caps=caps(5), load=LOAD, register=False, client=hot
    )
    assert await hot.hget(keys.node_caps("n1"), "drained") == "1"
    foreign = await node_drain(node_id="n1", drained=False, channel="other", client=hot)
    assert foreign is OwnedOutcome.NOT_OWNER
    await node_publish(
        node_id="n1", channel="c2", caps=caps(5), load=LOAD, register=True, client=hot
    )
    assert await hot.hget(keys.node_caps("n1"), "drained") == "0"
    assert await node_drain(node_id="ghost", client=hot) is OwnedOutcome.NOT_PRESENT


async def test_directory_prune_drops_only_old_entries_of_absent_nodes(hot: RedisCluster) -> None:
    online = await online_node(hot, "alive")
    gone = await online_node(hot, "gone")
    await node_remove(node_id="gone", channel=gone, client=hot)
    assert await node_directory_prune(horizon_ms=60_000, client=hot) == 0  # too recent
    await asyncio.sleep(0.05)
    assert await node_directory_prune(horizon_ms=10, client=hot) == 1
    assert await hot.zscore(keys.node_directory_of("gone"), "gone") is None
    assert await hot.zscore(keys.node_directory_of("alive"), "alive") is not None
    assert online


async def test_a_prune_racing_a_re_registration_keeps_the_node_listed(hot: RedisCluster) -> None:
    """The pruner saw the node absent; the node registers again before the prune's CAS."""
    from hotstate.scripts import SCRIPTS

    channel = await online_node(hot, "n1")
    await node_remove(node_id="n1", channel=channel, client=hot)
    directory = keys.node_directory_of("n1")
    seen = int(await hot.zscore(directory, "n1"))
    await asyncio.sleep(0.02)
    await online_node(hot, "n1")  # enlists with a newer stamp
    reply = await SCRIPTS.call(
        "node_directory_prune", keys=[directory], args=[0, "n1", seen], client=hot
    )
    assert reply.number(0) == 0
    assert await hot.zscore(directory, "n1") is not None
