"""request_claim: one request id (per tenant) yields one job, from any number of processes."""

from __future__ import annotations

import asyncio
import multiprocessing

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.jobs import job_get, request_claim, request_release
from hotstate.tests.workers import claimer_main


async def test_a_retry_within_the_lease_gets_the_same_job(hot: RedisCluster) -> None:
    first = await request_claim(
        tenant="acme", request_id="r1", job_id="j1", lease_ms=60_000, client=hot
    )
    retry = await request_claim(
        tenant="acme", request_id="r1", job_id="j2", lease_ms=60_000, client=hot
    )
    assert (first.won, first.job_id) == (True, "j1")
    assert (retry.won, retry.job_id) == (False, "j1")


async def test_the_same_request_id_of_another_tenant_is_another_request(hot: RedisCluster) -> None:
    await request_claim(tenant="acme", request_id="r1", job_id="j1", lease_ms=60_000, client=hot)
    other = await request_claim(
        tenant="globex", request_id="r1", job_id="j2", lease_ms=60_000, client=hot
    )
    assert (other.won, other.job_id) == (True, "j2")


async def test_after_the_lease_the_request_is_judged_afresh(hot: RedisCluster) -> None:
    await request_claim(tenant="acme", request_id="r1", job_id="j1", lease_ms=100, client=hot)
    await asyncio.sleep(0.15)
    later = await request_claim(
        tenant="acme", request_id="r1", job_id="j2", lease_ms=60_000, client=hot
    )
    assert (later.won, later.job_id) == (True, "j2")


async def test_a_rejected_request_is_released_only_by_its_own_job(hot: RedisCluster) -> None:
    await request_claim(tenant="acme", request_id="r1", job_id="j1", lease_ms=60_000, client=hot)
    assert not await request_release(tenant="acme", request_id="r1", job_id="j9", client=hot)
    assert await hot.get(keys.request_binding("acme", "r1")) == "j1"
    assert await request_release(tenant="acme", request_id="r1", job_id="j1", client=hot)
    assert not await request_release(tenant="acme", request_id="r1", job_id="j1", client=hot)
    retry = await request_claim(
        tenant="acme", request_id="r1", job_id="j2", lease_ms=60_000, client=hot
    )
    assert (retry.won, retry.job_id) == (True, "j2")


def test_one_request_claimed_from_several_processes_yields_one_job(
    redis_cluster_url: str, hot_prefix: str
) -> None:
    prefix = hot_prefix
    processes, tasks = 4, 25
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=claimer_main,
            args=(redis_cluster_url, prefix, "acme", "r-dup", ready, results, index, tasks),
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = [item for _ in workers for item in results.get(timeout=60)]
        for worker in workers:
            worker.join(timeout=30)
        assert all(worker.exitcode == 0 for worker in workers)
        bound = {job_id for job_id, _, _ in outcomes}
        assert len(outcomes) == processes * tasks
        assert len(bound) == 1
        (job_id,) = bound
        # One claim won (its candidate is the bound job) and the job was created once, by
        # whichever caller holding that id got there first.
        assert [candidate for _, _, candidate in outcomes if candidate == job_id] == [job_id]
        assert sum(created for _, created, _ in outcomes) == 1
        view = asyncio.run(_read(redis_cluster_url, job_id))
        assert view is not None
        assert view.attempt == 1
        # Every session that sent the request awaits the one job's result.
        assert len(view.subscribers) == processes * tasks
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()


async def _read(url: str, job_id: str):
    """The job under the test's HOTSTATE_PREFIX (``hot_prefix``), the workers' prefix too."""
    from hotstate.client import build_client

    client = build_client(url)
    view = await job_get(job_id=job_id, client=client)
    await client.aclose()
    return view
