"""The duty runner: a duty's loop ends on the first cancel, even one its round swallowed (as
redis-py's ``asyncio.wait_for`` does on Python 3.11, CPython gh-86296), so that ``asyncio.run``
and test teardown never wait on it forever."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio.cluster import RedisCluster

from core.runtime import Duty, Runtime


@pytest.mark.parametrize("failing", [False, True])
async def test_a_duty_ends_on_the_first_cancel_even_if_its_round_swallows_it(
    redis: RedisCluster, failing: bool
) -> None:
    inside = asyncio.Event()

    async def round_that_swallows_the_cancel() -> None:
        inside.set()
        with contextlib.suppress(asyncio.CancelledError):  # dropped; the command goes on
            await asyncio.sleep(0.2)
        await redis.ping()
        if failing:
            raise RuntimeError("a failing round, then a backoff")

    runtime = Runtime(instance_id="i-test", loop=asyncio.get_running_loop())
    runtime.start([Duty("swallower", 0.01, round_that_swallows_the_cancel)])
    task = runtime.tasks["swallower"]
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    try:
        assert task in done, "the duty went on after its cancel"
        assert task.cancelled()
    finally:
        await runtime.stop(within=3.0)
