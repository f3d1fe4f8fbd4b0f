"""slot_reserve is the authority on node capacity: it refuses, never oversells, and self-heals."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

from redis.asyncio.cluster import RedisCluster

from hotstate import keys, mna
from hotstate.nodes import node_drain, node_remove
from hotstate.slots import ReserveOutcome, slot_release
from hotstate.slots import slot_reserve as reserve
from hotstate.tests.helpers import online_node
from hotstate.tests.workers import reserver_main


async def test_reserve_takes_slots_until_the_node_is_full(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=2)
    first = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    second = await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert (first.outcome, first.live) == (ReserveOutcome.RESERVED, 1)
    assert (second.outcome, second.live) == (ReserveOutcome.RESERVED, 2)


async def test_reserve_refuses_when_node_is_full(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=1)
    assert (await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)).ok
    full = await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert (full.outcome, full.ok, full.live) == (ReserveOutcome.FULL, False, 1)
    assert await hot.zrange(keys.node_reservations("n1"), 0, -1) == ["j1"]


async def test_reserve_refuses_an_offline_node(hot: RedisCluster) -> None:
    refused = await reserve(node_id="ghost", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert refused.outcome is ReserveOutcome.NOT_PRESENT
    channel = await online_node(hot, "n1")
    await node_remove(node_id="n1", channel=channel, client=hot)
    refused = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert refused.outcome is ReserveOutcome.NOT_PRESENT


async def test_reserve_refuses_a_drained_node(hot: RedisCluster) -> None:
    await online_node(hot, "n1")
    await node_drain(node_id="n1", client=hot)
    refused = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert refused.outcome is ReserveOutcome.DRAINED
    await node_drain(node_id="n1", drained=False, client=hot)
    assert (await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)).ok


async def test_reserve_refuses_a_service_the_node_does_not_offer(hot: RedisCluster) -> None:
    await online_node(hot, "n1")
    refused = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="tts", client=hot)
    assert refused.outcome is ReserveOutcome.NOT_SERVED


async def test_reserve_refuses_a_node_marked_unavailable_for_the_service(
    hot: RedisCluster,
) -> None:
    await online_node(hot, "n1")
    await mna.mna_mark(node_id="n1", service_id="asr", service_version="v2", client=hot)
    marked = await reserve(
        node_id="n1", job_id="j1", attempt=1, service_id="asr", service_version="v2", client=hot
    )
    assert marked.outcome is ReserveOutcome.UNAVAILABLE
    # The mark names v2 only: v1 and "any version" requests may still go there.
    other = await reserve(
        node_id="n1", job_id="j2", attempt=1, service_id="asr", service_version="v1", client=hot
    )
    assert other.ok
    await mna.mna_mark(node_id="n1", service_id="asr", service_version=None, client=hot)
    any_version = await reserve(
        node_id="n1", job_id="j3", attempt=1, service_id="asr", service_version="v1", client=hot
    )
    assert any_version.outcome is ReserveOutcome.UNAVAILABLE


async def test_an_unavailable_mark_expires(hot: RedisCluster) -> None:
    await online_node(hot, "n1")
    await mna.mna_mark(
        node_id="n1", service_id="asr", service_version=None, mark_ttl_ms=150, client=hot
    )
    assert (
        await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    ).outcome is (ReserveOutcome.UNAVAILABLE)
    await asyncio.sleep(0.2)
    assert (await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)).ok


async def test_reserve_twice_for_one_job_counts_once(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=2)
    first = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    again = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert (first.outcome, again.outcome) == (ReserveOutcome.RESERVED, ReserveOutcome.HELD)
    assert again.ok and again.live == 1
    assert await hot.zcard(keys.node_reservations("n1")) == 1


async def test_concurrent_reserves_for_one_job_take_one_slot(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=3)
    results = await asyncio.gather(
        *(
            reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
            for _ in range(20)
        )
    )
    assert sorted(r.outcome for r in results).count(ReserveOutcome.RESERVED) == 1
    assert all(r.ok for r in results)
    assert await hot.zcard(keys.node_reservations("n1")) == 1


async def test_release_twice_frees_once_and_never_goes_negative(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=1)
    await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    first = await slot_release(node_id="n1", job_id="j1", attempt=1, client=hot)
    second = await slot_release(node_id="n1", job_id="j1", attempt=1, client=hot)
    never = await slot_release(node_id="n1", job_id="never-reserved", attempt=1, client=hot)
    assert (first.released, first.live) == (True, 0)
    assert (second.released, second.live) == (False, 0)
    assert (never.released, never.live) == (False, 0)
    # The freed slot is usable at once, and only once.
    assert (await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)).ok
    full = await reserve(node_id="n1", job_id="j3", attempt=1, service_id="asr", client=hot)
    assert full.outcome is ReserveOutcome.FULL


async def test_an_older_attempts_late_release_leaves_the_newer_attempts_slot(
    hot: RedisCluster,
) -> None:
    """A job failed over from a node and placed there again: its first attempt's owed release
    (done late, by the node's socket or the sweep) must not free the slot the second holds,
    or the node takes one job too many (the chaos tests' kill -9 of an instance caught it)."""
    await online_node(hot, "n1", max_jobs=1)
    await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    again = await reserve(node_id="n1", job_id="j1", attempt=2, service_id="asr", client=hot)
    assert again.outcome is ReserveOutcome.HELD
    late = await slot_release(node_id="n1", job_id="j1", attempt=1, client=hot)
    assert (late.released, late.live) == (False, 1)
    full = await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert full.outcome is ReserveOutcome.FULL
    # The same when the first attempt's slot was freed before the second took it.
    await slot_release(node_id="n1", job_id="j1", attempt=2, client=hot)
    await reserve(node_id="n1", job_id="j1", attempt=3, service_id="asr", client=hot)
    late = await slot_release(node_id="n1", job_id="j1", attempt=2, client=hot)
    assert (late.released, late.live) == (False, 1)
    # An older attempt's reserve does not take the hold back; the holder's release frees it.
    stale = await reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert stale.outcome is ReserveOutcome.HELD
    assert (await slot_release(node_id="n1", job_id="j1", attempt=3, client=hot)).released
    assert await hot.hgetall(keys.node_holders("n1")) == {}


async def test_expired_reservations_take_their_holders_with_them(hot: RedisCluster) -> None:
    await online_node(hot, "n1", max_jobs=2)
    await reserve(node_id="n1", job_id="gone", attempt=4, service_id="asr", ttl_ms=50, client=hot)
    await asyncio.sleep(0.1)
    await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert await hot.hgetall(keys.node_holders("n1")) == {"j2": "1"}
    ttls = [await hot.pttl(keys.node_reservations("n1")), await hot.pttl(keys.node_holders("n1"))]
    assert ttls[1] > 0 and abs(ttls[0] - ttls[1]) < 1000, ttls


async def test_a_reservation_never_released_frees_its_slot_after_its_ttl(
    hot: RedisCluster,
) -> None:
    await online_node(hot, "n1", max_jobs=1)
    lost = await reserve(
        node_id="n1", job_id="crashed", attempt=1, service_id="asr", ttl_ms=200, client=hot
    )
    assert lost.ok
    blocked = await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert blocked.outcome is ReserveOutcome.FULL
    await asyncio.sleep(0.25)
    healed = await reserve(node_id="n1", job_id="j2", attempt=1, service_id="asr", client=hot)
    assert (healed.outcome, healed.live) == (ReserveOutcome.RESERVED, 1)
    assert await hot.zrange(keys.node_reservations("n1"), 0, -1) == ["j2"]


def test_no_oversell_across_processes_and_tasks(redis_cluster_url: str, hot_prefix: str) -> None:
    """4 processes x 50 tasks reserve and release on 5 small nodes; no node ever passes max_jobs.

    1. Each process counts its own held slots in a shared, locked array: +1 after a reserve
       succeeds, -1 before its release, so the array never counts more than Redis holds.
    2. Meanwhile this process samples that array under its lock, and every node's ZCARD.
    3. At the end each process reports what it still holds: that must be exactly what Redis holds.
    """
    prefix = hot_prefix
    node_ids = [f"n{i}" for i in range(5)]
    max_jobs = 3
    processes, tasks, rounds = 4, 50, 8
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("i", len(node_ids))
    ready = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=reserver_main,
            args=(
                redis_cluster_url,
                prefix,
                node_ids,
                max_jobs,
                counts,
                ready,
                results,
                index,
                tasks,
                rounds,
            ),
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        report = asyncio.run(
            _sample_while_running(
                redis_cluster_url,
                node_ids,
                max_jobs,
                counts,
                ready,
                workers,
                results,
                processes,
            )
        )
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    assert report["max_counted"] <= max_jobs, report
    assert report["max_zcard"] <= max_jobs, report
    assert report["max_counted"] == max_jobs, "the test never filled a node: it proves nothing"
    assert report["samples"] > 20, report
    assert report["reserved"] >= 100 and report["full"] > report["reserved"], report
    assert report["final_redis"] == report["final_held"], report
    assert report["final_counts"] == [len(report["final_held"][n]) for n in node_ids]


async def _sample_while_running(
    url, node_ids, max_jobs, counts, ready, workers, results, processes
) -> dict:
    """Sample under the test's HOTSTATE_PREFIX (``hot_prefix``), the workers' prefix too."""
    from hotstate.client import build_client

    client = build_client(url)
    for node_id in node_ids:
        await online_node(client, node_id, max_jobs=max_jobs)
    reservation_keys = [keys.node_reservations(node_id) for node_id in node_ids]
    await asyncio.to_thread(ready.wait, 60)
    max_counted = max_zcard = samples = 0
    reports = []
    deadline = time.monotonic() + 120
    while len(reports) < processes and time.monotonic() < deadline:
        if not any(worker.is_alive() for worker in workers) and results.empty():
            break  # a worker failed; its exit code tells the test
        with counts.get_lock():
            counted = list(counts)
        pipe = client.pipeline(transaction=False)
        for key in reservation_keys:
            pipe.zcard(key)
        zcards = await pipe.execute()
        max_counted = max(max_counted, *counted)
        max_zcard = max(max_zcard, *zcards)
        samples += 1
        while not results.empty():
            reports.append(results.get())
        await asyncio.sleep(0.002)
    final_held = {
        node_id: sorted(j for r in reports for j in r["held"][node_id]) for node_id in node_ids
    }
    final_redis = {
        node_id: sorted(await client.zrange(key, 0, -1))
        for node_id, key in zip(node_ids, reservation_keys, strict=True)
    }
    await client.aclose()
    return {
        "max_counted": max_counted,
        "max_zcard": max_zcard,
        "samples": samples,
        "reserved": sum(r["reserved"] for r in reports),
        "full": sum(r["full"] for r in reports),
        "final_held": final_held,
        "final_redis": final_redis,
        "final_counts": list(counts),
    }
