"""Durable writes: a job's creation, a request's binding and a node's slot reach a replica first.

DESIGN.md, "Durability and recovery": ``job_accepted`` is sent only once the job's record is on
a replica (bounded by DURABLE_WAIT_MS), so a primary's failover right after cannot forget a job
its session was told about. The replica is stopped (SIGSTOP) to make the wait observable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from redis.asyncio.cluster import RedisCluster

from hotstate import jobs, keys
from hotstate.slots import slot_reserve
from hotstate.tests.helpers import online_node


async def replica_pid(client: RedisCluster, key: str) -> int:
    """The process id of the replica of the primary that holds ``key``."""
    await client.initialize()
    replica = client.get_node_from_key(key, replica=True)
    assert replica is not None and replica.server_type == "replica", "the test needs a replica"
    server = await client.execute_command("INFO", "server", target_nodes=replica)
    return int(server["process_id"])


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def create(job_id: str) -> Any:
    return jobs.job_create(
        job_id=job_id, tenant="acme", request_id="r-1", session_id="s", service_id="asr",
        service_version=None, features=(), payload_json="{}", timeout_ms=1000,
    )  # fmt: skip


async def test_a_job_creation_waits_for_a_replica(hot: RedisCluster, settings: Any) -> None:
    settings.DURABLE_WAIT_MS = 5_000
    job_id = "j_durable"
    pid = await replica_pid(hot, keys.job_record(job_id))
    with stopped(pid):
        creating = asyncio.ensure_future(create(job_id))
        done, _ = await asyncio.wait({creating}, timeout=0.5)
        assert not done, "the creation answered before any replica had it"
        # The primary has it already: only the answer waits.
        assert await hot.hget(keys.job_record(job_id), "state") == "CREATED"
    created = await asyncio.wait_for(creating, timeout=5)
    assert created.created


async def test_without_a_wait_the_creation_answers_at_once(
    hot: RedisCluster, settings: Any
) -> None:
    settings.DURABLE_WAIT_MS = 0
    job_id = "j_not_durable"
    pid = await replica_pid(hot, keys.job_record(job_id))
    with stopped(pid):
        created = await asyncio.wait_for(create(job_id), timeout=2)
    assert created.created


async def test_a_lagging_replica_delays_the_answer_by_the_bound_only(
    hot: RedisCluster, settings: Any
) -> None:
    settings.DURABLE_WAIT_MS = 200
    job_id = "j_bounded"
    pid = await replica_pid(hot, keys.job_record(job_id))
    with stopped(pid):
        created = await asyncio.wait_for(create(job_id), timeout=3)
    assert created.created


async def test_a_reservation_waits_for_a_replica(hot: RedisCluster, settings: Any) -> None:
    """A failover that lost a reservation would let the node take one job too many."""
    settings.DURABLE_WAIT_MS = 5_000
    await online_node(hot, "n1", max_jobs=1)
    pid = await replica_pid(hot, keys.node_reservations("n1"))
    with stopped(pid):
        reserving = asyncio.ensure_future(
            slot_reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
        )
        done, _ = await asyncio.wait({reserving}, timeout=0.5)
        assert not done, "the reservation answered before any replica had it"
    reservation = await asyncio.wait_for(reserving, timeout=5)
    assert reservation.ok
