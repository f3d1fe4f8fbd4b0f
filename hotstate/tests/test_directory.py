"""The node snapshot read: every online node with caps, load, live reservations and marks."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.directory import NodeView, node_directory_read
from hotstate.mna import mna_mark
from hotstate.nodes import NodeLoad, node_drain, node_publish, node_remove
from hotstate.slots import slot_reserve
from hotstate.tests.helpers import caps, online_node


async def test_snapshot_reads_every_online_node_across_directory_shards(
    hot: RedisCluster,
) -> None:
    node_ids = [f"n{i}" for i in range(40)]
    for node_id in node_ids:
        await online_node(hot, node_id, max_jobs=3)
    assert len({keys.node_directory_shard(n) for n in node_ids}) > 8
    views = {view.node_id: view for view in await node_directory_read(client=hot)}
    assert set(views) == set(node_ids)
    view = views["n7"]
    assert (view.channel, view.caps.max_jobs, view.drained, view.live) == ("chan-n7", 3, False, 0)
    assert view.caps.services == {"asr": ("v1", "v2")} and view.caps.features == {"gpu"}
    assert view.load == NodeLoad(cpu_pct=10.0, mem_pct=20.0, gpu_pct=None)


async def test_snapshot_shows_load_reservations_drain_and_marks(hot: RedisCluster) -> None:
    await node_publish(
        node_id="n1",
        channel="c1",
        caps=caps(4),
        register=True,
        client=hot,
        load=NodeLoad(cpu_pct=55.5, mem_pct=70.0, gpu_pct=90.0),
    )
    await slot_reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    await slot_reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    await slot_reserve(
        node_id="n1", job_id="gone", attempt=1, service_id="asr", ttl_ms=1, client=hot
    )
    await mna_mark(node_id="n1", service_id="asr", service_version="v2", client=hot)
    await node_drain(node_id="n1", client=hot)
    (view,) = await node_directory_read(client=hot)
    assert view.load == NodeLoad(cpu_pct=55.5, mem_pct=70.0, gpu_pct=90.0)
    assert (view.live, view.drained) == (2, True)
    assert set(view.unavailable) == {"asr@v2"}


async def test_snapshot_skips_nodes_that_went_offline(hot: RedisCluster) -> None:
    channel = await online_node(hot, "gone")
    await online_node(hot, "here")
    await node_remove(node_id="gone", channel=channel, client=hot)
    assert [view.node_id for view in await node_directory_read(client=hot)] == ["here"]


async def test_an_empty_cluster_snapshot_is_empty(hot: RedisCluster) -> None:
    assert await node_directory_read(client=hot) == []


def test_a_registered_view_starts_with_no_load_on_its_slots() -> None:
    view = NodeView.registered(
        node_id="n1", channel="c", caps=caps(2), load=NodeLoad(cpu_pct=1, mem_pct=2)
    )
    assert (view.live, view.unavailable, view.drained) == (0, {}, False)
