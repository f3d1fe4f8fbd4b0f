"""Shutdown without ``close()``: ``asyncio.run`` returns, every background loop ends on the first
cancel (even one that redis-py swallows), and the per-loop clients go with their loop."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from clusterlayer import ClusterChannelLayer, ProcessGone
from clusterlayer.tests.conftest import LayerFactory
from clusterlayer.tests.test_contract import receive_within
from clusterlayer.tests.test_layer import eventually
from tests.support.connections import connections_to

ROOT = Path(__file__).resolve().parents[2]


async def run_child(code: str, *, within: float) -> str:
    """Run ``code`` in a fresh interpreter; fail (and kill it) if it has not exited in time."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(within):
            output, _ = await child.communicate()
    except TimeoutError:
        child.kill()
        output, _ = await child.communicate()
        pytest.fail(f"the child did not exit within {within} s:\n{output.decode()[-3000:]}")
    assert child.returncode == 0, output.decode()[-3000:]
    return output.decode()


async def test_asyncio_run_returns_without_close(
    redis_cluster_url: str, redis: RedisCluster
) -> None:
    """The receiver never calls close(): asyncio.run must still return, round after round (a
    single round hung most of the time before the fix, so five make it certain)."""
    prefix = f"cl-{secrets.token_hex(5)}"
    code = f"""
import asyncio, time
from clusterlayer import ClusterChannelLayer

async def main():
    receiver = ClusterChannelLayer(url={redis_cluster_url!r}, prefix={prefix!r})
    sender = ClusterChannelLayer(url={redis_cluster_url!r}, prefix={prefix!r})
    channel = await receiver.new_channel()
    await sender.send(channel, {{"type": "hello"}})
    assert await receiver.receive(channel) == {{"type": "hello"}}

for _ in range(5):
    started = time.monotonic()
    asyncio.run(main())
    print(f"returned in {{time.monotonic() - started:.2f}} s", flush=True)
"""
    try:
        output = await run_child(code, within=20)
        took = [float(seconds) for seconds in re.findall(r"returned in ([0-9.]+) s", output)]
        assert len(took) == 5
        # A cancel redis-py dropped lets the command in flight finish: one blocking read at
        # most (block_timeout, 2 s), never more.
        assert max(took) < 3.5, took
    finally:
        left = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        for key in left:
            await redis.delete(key)
    # Each process unregistered when its loop closed (senders learn at once that it is gone).
    assert left == []


class SwallowedCancels:
    """Commands of the layer's background tasks that finish even when cancelled, as redis-py's
    ``asyncio.wait_for`` does when the cancel arrives as the write completes (CPython gh-86296).

    Each command of a task named ``clusterlayer-*`` first waits a moment (where the test's cancel
    lands, and is dropped), then runs. ``inside`` holds the tasks waiting there.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside: set[asyncio.Task[Any]] = set()
        execute = ClusterPipeline.execute
        execute_command = RedisCluster.execute_command

        async def pipeline_execute(pipe: ClusterPipeline, *args: Any, **kwargs: Any) -> Any:
            await self._swallow()
            return await execute(pipe, *args, **kwargs)

        async def command(client: RedisCluster, *args: Any, **kwargs: Any) -> Any:
            await self._swallow()
            return await execute_command(client, *args, **kwargs)

        monkeypatch.setattr(ClusterPipeline, "execute", pipeline_execute)
        monkeypatch.setattr(RedisCluster, "execute_command", command)

    async def _swallow(self) -> None:
        task = asyncio.current_task()
        if task is None or not task.get_name().startswith("clusterlayer-"):
            return
        self.inside.add(task)
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            pass  # dropped, and the command goes on
        finally:
            self.inside.discard(task)

    async def cancel_once_inside(self, task: asyncio.Task[Any]) -> None:
        """Wait until ``task`` is in a command, and cancel it there, once."""

        async def in_a_command() -> bool:
            return task in self.inside

        await eventually(in_a_command, seconds=5.0)
        task.cancel()


@pytest.fixture
def swallowed(monkeypatch: pytest.MonkeyPatch) -> Iterator[SwallowedCancels]:
    yield SwallowedCancels(monkeypatch)


async def task_named(start: str) -> asyncio.Task[Any]:
    """The one running task whose name starts with ``start``, once it exists."""

    def named() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith(start)]

    async def started() -> bool:
        return len(named()) == 1

    await eventually(started)
    return named()[0]


async def assert_ends(task: asyncio.Task[Any], within: float) -> None:
    done, _ = await asyncio.wait({task}, timeout=within)
    assert task in done, f"{task.get_name()} went on after its cancel"
    assert task.cancelled(), f"{task.get_name()} ended without being cancelled: {task!r}"


@pytest.mark.parametrize("loop", ["reader", "heartbeat", "fetch"])
async def test_a_background_loop_ends_on_the_first_cancel_even_if_swallowed(
    cluster_layer_factory: LayerFactory, swallowed: SwallowedCancels, loop: str
) -> None:
    layer = cluster_layer_factory(block_timeout=0.5, process_ttl=1.0, heartbeat_interval=0.05)
    await layer.new_channel()
    receiving = asyncio.create_task(layer.receive("test.normal"))
    try:
        task = await task_named(f"clusterlayer-{loop}-")
        await swallowed.cancel_once_inside(task)
        # The command the cancel could not stop still runs (a blocking read: block_timeout).
        await assert_ends(task, within=2.0)
    finally:
        receiving.cancel()


async def test_the_full_marks_publisher_ends_on_the_first_cancel_even_if_swallowed(
    cluster_layer_factory: LayerFactory, swallowed: SwallowedCancels
) -> None:
    layer = cluster_layer_factory(capacity=1)
    channel = await layer.new_channel()
    task = await task_named("clusterlayer-marks-")
    await layer.send(channel, {"type": "fills it"})  # marked full: the publisher writes
    await swallowed.cancel_once_inside(task)
    await assert_ends(task, within=2.0)
    assert await receive_within(layer, channel) == {"type": "fills it"}


def test_async_to_sync_calls_leave_no_client_behind(redis_cluster_url: str) -> None:
    """Each async_to_sync call runs on a loop of its own, which gets a process of the layer
    (and a client); the process must go when its loop closes, as channels_redis's does."""
    layer = ClusterChannelLayer(url=redis_cluster_url, prefix=f"cl-{secrets.token_hex(5)}")
    async_to_sync(layer.group_add)("test.group", "test.member")
    before = connections_to(redis_cluster_url)
    for i in range(20):
        async_to_sync(layer.group_send)("test.group", {"type": "t", "i": i})
        async_to_sync(layer.send)("test.member", {"type": "t", "i": i})
    after = connections_to(redis_cluster_url)
    async_to_sync(layer.flush)()
    assert after <= before, f"{after - before} connections left open by 40 calls"
    assert len(layer._processes) == 0


def test_a_channel_of_a_closed_loop_is_refused_with_the_reason(redis_cluster_url: str) -> None:
    layer = ClusterChannelLayer(url=redis_cluster_url, prefix=f"cl-{secrets.token_hex(5)}")
    channel = async_to_sync(layer.new_channel)()
    with pytest.raises(ValueError, match="event loop of this layer that has closed"):
        async_to_sync(layer.receive)(channel)
    with pytest.raises(ProcessGone):  # unregistered when its loop closed
        async_to_sync(layer.send)(channel, {"type": "t"})


async def test_a_channel_of_another_running_loop_is_refused_with_the_reason(
    cluster_layer_factory: LayerFactory,
) -> None:
    """One layer used from two loops at once (here a thread's): each loop's channels are its
    own; the other loop can send to them, not receive on them."""
    layer = cluster_layer_factory()
    other_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=other_loop.run_forever, daemon=True)
    thread.start()
    try:
        made = asyncio.run_coroutine_threadsafe(layer.new_channel(), other_loop)
        channel = await asyncio.wrap_future(made)
        with pytest.raises(ValueError, match="belongs to another event loop of this layer"):
            await layer.receive(channel)
        await layer.send(channel, {"type": "across loops"})
        received = asyncio.run_coroutine_threadsafe(receive_within(layer, channel), other_loop)
        assert await asyncio.wrap_future(received) == {"type": "across loops"}
    finally:
        asyncio.run_coroutine_threadsafe(layer.close(), other_loop).result(10)
        other_loop.call_soon_threadsafe(other_loop.stop)
        thread.join(10)
        other_loop.close()
