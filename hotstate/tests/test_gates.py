"""A primary that stalls holds up the calls to it, and no others (``hotstate.scripts._gate``).

Under CLIENT PAUSE WRITE (or a failover), calls to that primary wait for seconds. They used to
hold permits of one count for the whole client, so a burst of them (a busy instance) stopped
every call to the healthy primaries too: every submit waited, whatever shards it touched.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate import keys, timers
from hotstate.errors import DependencyDown
from hotstate.scripts import call_deadline

PAUSE_MS = 3_000


async def job_on(client: RedisCluster, node_name: str, *, not_: bool = False) -> str:
    """A job id whose timer shard lives (or, with ``not_``, does not live) on ``node_name``."""
    for n in itertools.count():
        job_id = f"j_gate_{n}"
        node = client.get_node_from_key(keys.timers_of(job_id))
        assert node is not None
        if (node.name == node_name) != not_:
            return job_id
    raise AssertionError("unreachable")


async def test_a_stalled_primary_does_not_hold_up_calls_to_the_others(hot: RedisCluster) -> None:
    await hot.initialize()
    stalled = hot.get_node_from_key(keys.timers_of("j_gate_0"))
    assert stalled is not None
    on_stalled = await job_on(hot, stalled.name)
    elsewhere = await job_on(hot, stalled.name, not_=True)
    await timers.timer_arm(job_id=on_stalled, due_ms=1, client=hot)  # scripts loaded
    await timers.timer_arm(job_id=elsewhere, due_ms=1, client=hot)
    await hot.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE", target_nodes=stalled)
    try:
        # More calls to the stalled primary than one node's pool holds ...
        waiting = [
            asyncio.ensure_future(timers.timer_arm(job_id=on_stalled, due_ms=2, client=hot))
            for _ in range(150)
        ]
        await asyncio.sleep(0)
        # ... and a call to another primary still goes through while they wait.
        await asyncio.wait_for(
            timers.timer_arm(job_id=elsewhere, due_ms=2, client=hot), timeout=PAUSE_MS / 2000
        )
        assert not any(task.done() for task in waiting)
    finally:
        await hot.execute_command("CLIENT", "UNPAUSE", target_nodes=stalled)
    await asyncio.gather(*waiting)


async def test_a_deadline_bounds_a_task_s_calls_all_together(hot: RedisCluster) -> None:
    """Each call alone waits up to REDIS_SOCKET_TIMEOUT for a stalled primary; under a
    ``call_deadline`` the calls of a request end within it in all, and the next call after it
    fails at once."""
    await hot.initialize()
    stalled = hot.get_node_from_key(keys.timers_of("j_gate_0"))
    assert stalled is not None
    on_stalled = await job_on(hot, stalled.name)
    await timers.timer_arm(job_id=on_stalled, due_ms=1, client=hot)  # script loaded
    await hot.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE", target_nodes=stalled)
    try:
        with call_deadline(0.3):
            with pytest.raises(DependencyDown):
                await asyncio.wait_for(
                    timers.timer_arm(job_id=on_stalled, due_ms=2, client=hot), timeout=2
                )
            with pytest.raises(DependencyDown, match="deadline"):
                await timers.timer_arm(job_id=on_stalled, due_ms=3, client=hot)
    finally:
        await hot.execute_command("CLIENT", "UNPAUSE", target_nodes=stalled)
