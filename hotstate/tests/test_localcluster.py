"""The local cluster is a real Redis Cluster: sharded, replicated, and strict about slots."""

from __future__ import annotations

import socket

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError

from hotstate.localcluster import LocalCluster, LocalClusterError, from_environment

pytestmark = pytest.mark.usefixtures("redis_cluster_url")


def _slot_ranges(nodes_reply: dict) -> dict[str, list[tuple[int, int]]]:
    ranges: dict[str, list[tuple[int, int]]] = {}
    for address, node in nodes_reply.items():
        if "master" in node["flags"]:
            ranges[address] = [(int(a), int(b)) for a, b in (s for s in node["slots"])]
    return ranges


async def test_cluster_has_three_primaries_each_with_a_replica(redis: RedisCluster) -> None:
    nodes = await redis.cluster_nodes()
    primaries = {n["node_id"]: a for a, n in nodes.items() if "master" in n["flags"]}
    replicas_of = [n["master_id"] for n in nodes.values() if "slave" in n["flags"]]
    assert len(primaries) == 3
    assert sorted(replicas_of) == sorted(primaries)


async def test_a_key_in_each_primarys_range_is_stored_on_that_primary(
    redis: RedisCluster, unique_tag: str
) -> None:
    ranges = _slot_ranges(await redis.cluster_nodes())
    assert len(ranges) == 3
    written: dict[str, str] = {}
    candidate = 0
    # Find, for every primary, a hash tag whose slot falls in its range, and write it.
    while len(written) < 3:
        key = f"{{{unique_tag}:{candidate}}}:probe"
        slot = await redis.cluster_keyslot(key)
        owner = next(a for a, rs in ranges.items() if any(lo <= slot <= hi for lo, hi in rs))
        if owner not in written:
            await redis.set(key, owner, ex=60)
            written[owner] = key
        candidate += 1
    try:
        for address, key in written.items():
            node = redis.get_node(host=address.split(":")[0], port=int(address.split(":")[1]))
            # Asking the owner directly (no redirection) proves the key lives there.
            assert await redis.execute_command("GET", key, target_nodes=node) == address
    finally:
        for key in written.values():
            await redis.delete(key)


async def test_a_script_touching_two_slots_is_refused_with_crossslot(
    redis: RedisCluster, unique_tag: str
) -> None:
    first, second = f"{{{unique_tag}:a}}:k", f"{{{unique_tag}:b}}:k"
    assert await redis.cluster_keyslot(first) != await redis.cluster_keyslot(second)
    node = redis.get_node_from_key(first)
    # The server answers "CROSSSLOT ..."; redis-py maps that code to ClusterCrossSlotError.
    with pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
        await redis.execute_command(
            "EVAL", "return redis.call('MGET', KEYS[1], KEYS[2])", 2, first, second,
            target_nodes=node,
        )  # fmt: skip


def test_starting_a_running_cluster_changes_nothing() -> None:
    cluster = from_environment()
    assert "already running" in cluster.start()
    assert cluster.is_healthy()


def test_a_taken_port_is_reported_clearly(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cluster = LocalCluster(base_port=port, data_dir=tmp_path / "cluster")
        with pytest.raises(LocalClusterError, match=f"port 127.0.0.1:{port} is taken"):
            cluster.start(timeout=5)
    assert not (tmp_path / "cluster").exists()
