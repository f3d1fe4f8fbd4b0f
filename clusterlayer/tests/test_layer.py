"""What this layer promises beyond the generic contract: the inbox per process, the local fast
path, acknowledged delivery, capacity across processes, dead processes, close()."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from channels.exceptions import ChannelFull
from redis.asyncio.cluster import RedisCluster

from clusterlayer import ClusterChannelLayer, ProcessGone, keys, outbox, streams
from clusterlayer.process import process_of, stop_tasks
from clusterlayer.streams import GROUP
from clusterlayer.tests.conftest import LayerFactory
from clusterlayer.tests.test_contract import assert_nothing_arrives, receive_within

ROOT = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> None:
    """Poll Redis state that the layer changes in the background, until ``check`` holds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{check.__name__} did not hold within {seconds} s")
        await asyncio.sleep(0.02)


async def entries_added(redis: RedisCluster, stream: str) -> int:
    info: dict[str, Any] = await redis.xinfo_stream(stream)
    return int(info["entries-added"])


async def test_new_channel_names_the_process(cluster_layer_factory: LayerFactory) -> None:
    layer = cluster_layer_factory()
    channel = await layer.new_channel("websocket")
    match = re.fullmatch(r"websocket\.([0-9a-f]{16})!([0-9a-f]{12})", channel)
    assert match is not None
    assert process_of(channel) == match.group(1) == layer._process().id
    assert process_of("plain.channel") is None


async def test_a_send_within_the_process_never_touches_redis(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    layer = cluster_layer_factory()
    channel = await layer.new_channel()
    await layer.group_add("test.local", channel)
    await layer.send(channel, {"type": "direct"})
    await layer.group_send("test.local", {"type": "grouped"})
    assert await receive_within(layer, channel) == {"type": "direct"}
    assert await receive_within(layer, channel) == {"type": "grouped"}
    assert await entries_added(redis, layer._process().inbox_key) == 0


async def test_a_send_to_another_process_is_acknowledged_and_deleted(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    channel = await receiver.new_channel()
    inbox = receiver._process().inbox_key
    await sender.send(channel, {"type": "remote"})
    assert await receive_within(receiver, channel) == {"type": "remote"}
    assert await entries_added(redis, inbox) == 1

    async def settled() -> bool:
        pending = await redis.xpending(inbox, GROUP)
        return int(pending["pending"]) == 0 and await redis.xlen(inbox) == 0

    await eventually(settled)


async def test_sends_in_flight_together_share_one_script_call(
    cluster_layer_factory: LayerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory(capacity=1000)
    channel = await receiver.new_channel()
    batch_sizes: list[int] = []
    deliver = outbox.deliver_inbox

    async def counting(*args: Any, **kwargs: Any) -> Any:
        batch_sizes.append(len(kwargs["entries"]))
        return await deliver(*args, **kwargs)

    monkeypatch.setattr(outbox, "deliver_inbox", counting)
    await asyncio.gather(*(sender.send(channel, {"type": "n", "i": i}) for i in range(300)))
    assert sum(batch_sizes) == 300
    assert len(batch_sizes) <= 3
    assert [(await receive_within(receiver, channel))["i"] for _ in range(300)] == list(range(300))


async def test_group_send_reaches_every_kind_of_member(
    cluster_layer_factory: LayerFactory,
) -> None:
    sender, first, second = [cluster_layer_factory() for _ in range(3)]
    own = await sender.new_channel()
    members = [own, *[await first.new_channel() for _ in range(2)], await second.new_channel()]
    for channel in [*members, "test.normal"]:
        await sender.group_add("test.everyone", channel)
    await sender.group_send("test.everyone", {"type": "all"})
    for layer, channel in zip([sender, first, first, second], members, strict=True):
        assert await receive_within(layer, channel) == {"type": "all"}
    assert await receive_within(second, "test.normal") == {"type": "all"}


async def test_a_remote_sender_gets_channel_full_until_the_receiver_catches_up(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory(capacity=2)
    channel = await receiver.new_channel()
    full_key = receiver._process().full_key
    await sender.send(channel, {"type": "t", "i": 1})
    await sender.send(channel, {"type": "t", "i": 2})

    async def marked_full() -> bool:
        return bool(await redis.sismember(full_key, channel))

    await eventually(marked_full)
    with pytest.raises(ChannelFull) as refused:
        await sender.send(channel, {"type": "t", "i": 3})
    assert not isinstance(refused.value, ProcessGone)

    assert (await receive_within(receiver, channel))["i"] == 1

    async def not_marked() -> bool:
        return not await marked_full()

    await eventually(not_marked)
    await sender.send(channel, {"type": "t", "i": 4})
    assert (await receive_within(receiver, channel))["i"] == 2
    assert (await receive_within(receiver, channel))["i"] == 4


async def test_group_send_to_a_full_remote_channel_drops_silently(
    cluster_layer_factory: LayerFactory,
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory(capacity=3)
    channel = await receiver.new_channel()
    await sender.group_add("test.group", channel)
    for i in range(10):
        await sender.group_send("test.group", {"type": "t", "i": i})
    received = [(await receive_within(receiver, channel))["i"] for _ in range(3)]
    assert received == [0, 1, 2]
    await assert_nothing_arrives(receiver, channel, 0.3)


async def test_a_stalled_process_refuses_sends_beyond_its_inbox_capacity(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    """A process that heartbeats but does not read (a stalled event loop) stands in here as an
    alive key with no reader behind it."""
    layer = cluster_layer_factory(inbox_capacity=3)
    stalled = secrets.token_hex(8)
    alive = keys.alive(layer.prefix, stalled)
    channel = f"specific.{stalled}!abc"
    await redis.set(alive, "1", px=10_000)
    try:
        for _ in range(3):
            await layer.send(channel, {"type": "t"})
        with pytest.raises(ChannelFull) as refused:
            await layer.send(channel, {"type": "t"})
        assert not isinstance(refused.value, ProcessGone)
        assert await redis.xlen(keys.inbox(layer.prefix, stalled)) == 3
    finally:
        await redis.delete(alive)


async def test_a_send_to_an_unknown_process_raises_process_gone(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    layer = cluster_layer_factory()
    nobody = secrets.token_hex(8)
    with pytest.raises(ProcessGone):
        await layer.send(f"specific.{nobody}!abc", {"type": "t"})
    assert not await redis.exists(keys.inbox(layer.prefix, nobody))


async def test_a_killed_process_is_pruned_and_its_inbox_expires(
    cluster_layer_factory: LayerFactory, redis: RedisCluster, redis_cluster_url: str
) -> None:
    """A real process, killed with SIGKILL: no close(), no goodbye; only its TTL tells."""
    layer = cluster_layer_factory()
    child_code = f"""
import asyncio
from clusterlayer import ClusterChannelLayer

async def main():
    layer = ClusterChannelLayer(url={redis_cluster_url!r}, prefix={layer.prefix!r},
                                process_ttl=1.0, heartbeat_interval=0.2)
    channel = await layer.new_channel()
    await layer.group_add("test.group", channel)
    print(channel, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child_code, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20):
            channel = (await child.stdout.readline()).decode().strip()
        assert "!" in channel, f"child printed {channel!r}"
        await layer.group_add("test.group", "test.survivor")
        await layer.send(channel, {"type": "while.alive"})
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    inbox = keys.inbox(layer.prefix, str(process_of(channel)))

    async def refused() -> bool:
        try:
            await layer.send(channel, {"type": "after.death"})
        except ProcessGone:
            return True
        return False

    await eventually(refused, seconds=3.0)
    await layer.group_send("test.group", {"type": "t"})
    members = await redis.zrange(keys.group(layer.prefix, "test.group"), 0, -1)
    assert members == ["test.survivor"]
    assert not await redis.exists(inbox)


async def test_expired_messages_in_an_inbox_are_not_delivered(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    channel = await receiver.new_channel()
    inbox = receiver._process().inbox_key
    # An entry written (by the server's clock) long ago: its id says when.
    stale = receiver.serialize({"type": "stale"})
    await redis.xadd(inbox, {"c": channel, "m": stale}, id="1-1")
    await sender.send(channel, {"type": "fresh"})
    assert await receive_within(receiver, channel) == {"type": "fresh"}
    await assert_nothing_arrives(receiver, channel, 0.3)


async def test_a_restarted_reader_delivers_pending_entries_exactly_once(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    """A reader cut short between reading and acknowledging leaves entries pending: one it had
    already handed to a mailbox (its XACK lost), one it had read but not handed over."""
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    channel = await receiver.new_channel()
    process = receiver._process()
    await stop_tasks(process.tasks[:1], within=3.0)
    await sender.send(channel, {"type": "t", "i": 1})
    await sender.send(channel, {"type": "t", "i": 2})
    response = await process.client.xreadgroup(GROUP, process.consumer, {process.inbox_key: ">"})
    entries = streams.entries(response)
    assert len(entries) == 2
    process.reader.hand_over(process.inbox_key, entries[:1], process.inbox.deliver)

    process.tasks[0] = asyncio.create_task(process.inbox.read())
    assert (await receive_within(receiver, channel))["i"] == 1
    assert (await receive_within(receiver, channel))["i"] == 2
    await assert_nothing_arrives(receiver, channel, 0.3)

    async def nothing_pending() -> bool:
        return int((await redis.xpending(process.inbox_key, GROUP))["pending"]) == 0

    await eventually(nothing_pending)


async def test_a_receive_cancelled_after_its_wake_up_passes_the_message_on(
    cluster_layer_factory: LayerFactory,
) -> None:
    layer = cluster_layer_factory()
    channel = await layer.new_channel()
    first = asyncio.create_task(layer.receive(channel))
    second = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.05)
    await layer.send(channel, {"type": "only"})  # wakes the first waiter, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == {"type": "only"}


async def test_only_the_owning_process_receives_on_its_channels(
    cluster_layer_factory: LayerFactory,
) -> None:
    owner, other = cluster_layer_factory(), cluster_layer_factory()
    channel = await owner.new_channel()
    with pytest.raises(ValueError, match="not a channel of this process"):
        await other.receive(channel)


async def test_close_stops_the_reader_and_unregisters(
    cluster_layer_factory: LayerFactory, redis: RedisCluster
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    channel = await receiver.new_channel()
    process = receiver._process()
    await receiver.close()
    assert all(task.done() for task in process.tasks)
    assert not [t for t in asyncio.all_tasks() if t.get_name().endswith(process.id)]
    assert not await redis.exists(process.alive_key, process.inbox_key, process.full_key)
    with pytest.raises(ProcessGone):
        await sender.send(channel, {"type": "t"})


async def test_flush_leaves_every_process_able_to_receive(
    cluster_layer_factory: LayerFactory,
) -> None:
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "before"})
    await receive_within(receiver, channel)
    await sender.flush()
    await sender.send(channel, {"type": "after"})
    assert await receive_within(receiver, channel) == {"type": "after"}


async def test_flush_and_close_leave_no_keys_behind(
    redis_cluster_url: str, redis: RedisCluster
) -> None:
    prefix = f"cl-{secrets.token_hex(5)}"
    sender = ClusterChannelLayer(url=redis_cluster_url, prefix=prefix)
    receiver = ClusterChannelLayer(url=redis_cluster_url, prefix=prefix)
    channel = await receiver.new_channel()
    await sender.group_add("test.group", channel)
    await sender.send(channel, {"type": "t"})
    await sender.send("test.normal", {"type": "t"})
    await receive_within(receiver, channel)
    await sender.flush()
    await sender.close()
    await receiver.close()
    assert [key async for key in redis.scan_iter(match=f"{prefix}:*")] == []


@pytest.mark.parametrize(
    "config",
    [
        {"block_timeout": 5.0, "socket_timeout": 5.0},
        {"process_ttl": 3.0, "heartbeat_interval": 2.0},
        {"prefix": "bad{prefix}"},
        {"capacity": 0},
    ],
)
def test_inconsistent_settings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClusterChannelLayer(url="redis://127.0.0.1:1", **config)


def test_the_layer_package_knows_nothing_of_the_scheduler() -> None:
    package = ROOT / "clusterlayer"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for name in ("hotstate", "nodes", "jobs", "sessions", "dashboard", "scheduler_project"):
            assert f"import {name}" not in text and f"from {name} " not in text, (path, name)


async def test_receive_after_receive_on_a_normal_channel_never_stalls(
    cluster_layer_factory: LayerFactory,
) -> None:
    """Each receive that finds the fetcher stopping (its last acknowledgement in flight) must
    still get a fetcher: one send and one receive at a time hits that moment again and again."""
    sender, receiver = cluster_layer_factory(), cluster_layer_factory()
    for i in range(100):
        await sender.send("test.one-by-one", {"type": "t", "i": i})
        assert (await receive_within(receiver, "test.one-by-one"))["i"] == i
