"""Entry points of the worker processes that the concurrency tests spawn.

Spawned processes start from scratch: each sets the Django settings module and the test's key
prefix before importing anything that reads settings, builds its own cluster client and waits
at a barrier, so that all processes hit the cluster at the same moment.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any


def _configure(prefix: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "scheduler_project.settings"
    os.environ["HOTSTATE_PREFIX"] = prefix


def reserver_main(
    url: str,
    prefix: str,
    node_ids: list[str],
    max_jobs: int,
    counts: Any,
    ready: Any,
    results: Any,
    index: int,
    tasks: int,
    rounds: int,
) -> None:
    _configure(prefix)
    results.put(
        asyncio.run(_reserver(url, node_ids, max_jobs, counts, ready, index, tasks, rounds))
    )


async def _reserver(
    url: str,
    node_ids: list[str],
    max_jobs: int,
    counts: Any,
    ready: Any,
    index: int,
    tasks: int,
    rounds: int,
) -> dict[str, Any]:
    from hotstate.client import build_client
    from hotstate.slots import ReserveOutcome, slot_release, slot_reserve

    client = build_client(url)
    held: dict[str, set[str]] = {node_id: set() for node_id in node_ids}
    tally = {"reserved": 0, "full": 0, "over": 0}
    rng = random.Random(index)

    def count(node_id: str, delta: int) -> None:
        with counts.get_lock():
            counts[node_ids.index(node_id)] += delta

    async def task(number: int) -> None:
        for round_ in range(rounds):
            node_id = rng.choice(node_ids)
            job_id = f"p{index}-t{number}-r{round_}"
            reservation = await slot_reserve(
                node_id=node_id,
                job_id=job_id,
                attempt=1,
                service_id="asr",
                ttl_ms=120_000,
                client=client,
            )
            if reservation.outcome is ReserveOutcome.FULL:
                tally["full"] += 1
                await asyncio.sleep(rng.random() / 1000)
                continue
            assert reservation.outcome is ReserveOutcome.RESERVED, reservation
            tally["reserved"] += 1
            if reservation.live > max_jobs:
                tally["over"] += 1
            count(node_id, +1)
            held[node_id].add(job_id)
            await asyncio.sleep(rng.random() * 3 / 1000)
            # Most slots are released at once; the last round keeps some to the end.
            if round_ < rounds - 1 or rng.random() < 0.5:
                held[node_id].discard(job_id)
                count(node_id, -1)
                await slot_release(node_id=node_id, job_id=job_id, attempt=1, client=client)

    await asyncio.to_thread(ready.wait, 60)
    await asyncio.gather(*(task(number) for number in range(tasks)))
    await client.aclose()
    assert tally["over"] == 0, tally
    return {**tally, "held": {node_id: sorted(jobs) for node_id, jobs in held.items()}}


def claimer_main(
    url: str,
    prefix: str,
    tenant: str,
    request_id: str,
    ready: Any,
    results: Any,
    index: int,
    tasks: int,
) -> None:
    _configure(prefix)
    results.put(asyncio.run(_claimer(url, tenant, request_id, ready, index, tasks)))


async def _claimer(
    url: str, tenant: str, request_id: str, ready: Any, index: int, tasks: int
) -> list[tuple[str, bool, str]]:
    """Each task claims the same request with its own candidate job id, then creates the job."""
    from hotstate.client import build_client
    from hotstate.jobs import job_create, request_claim

    client = build_client(url)

    async def attempt(number: int) -> tuple[str, bool, str]:
        candidate = f"job-p{index}-t{number}"
        claim = await request_claim(
            tenant=tenant, request_id=request_id, job_id=candidate, lease_ms=60_000, client=client
        )
        created = await job_create(
            job_id=claim.job_id,
            tenant=tenant,
            request_id=request_id,
            session_id=f"s-p{index}-t{number}",
            service_id="asr",
            service_version=None,
            features=[],
            payload_json="{}",
            timeout_ms=60_000,
            client=client,
        )
        return claim.job_id, created.created, candidate

    await asyncio.to_thread(ready.wait, 60)
    outcome = await asyncio.gather(*(attempt(number) for number in range(tasks)))
    await client.aclose()
    return outcome
