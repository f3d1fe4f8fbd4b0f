"""The channel layer contract (the Channels layer spec), run against this layer on the cluster
and against channels_redis's RedisChannelLayer on a standalone Redis.

Two instances from one factory stand in for two processes of one deployment.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions
from channels.exceptions import ChannelFull

from clusterlayer.tests.conftest import LayerFactory

ALL_TYPES = {
    "type": "every.type",
    "bytes": b"\x00\xffraw",
    "text": "h\u00e9llo \u2603",
    "int": 2**62,
    "negative": -(2**62),
    "float": 3.25,
    "list": [1, "two", [3.0]],
    "dict": {"nested": {"deeper": None}},
    "true": True,
    "false": False,
    "none": None,
}


async def receive_within(layer: object, channel: str, seconds: float = 3.0) -> dict[str, object]:
    async with asyncio.timeout(seconds):
        return await layer.receive(channel)  # type: ignore[attr-defined,no-any-return]


async def assert_nothing_arrives(layer: object, channel: str, seconds: float = 0.3) -> None:
    # channels_redis's client may turn the timeout's cancel into redis-py's own TimeoutError
    # (its read was cut short): either way, nothing arrived.
    with pytest.raises((TimeoutError, redis.exceptions.TimeoutError)):
        async with asyncio.timeout(seconds):
            await layer.receive(channel)  # type: ignore[attr-defined]


async def test_extensions_are_groups_and_flush(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    assert set(layer.extensions) == {"groups", "flush"}


async def test_normal_channel_delivers_a_sent_message(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    await layer.send("test.channel", {"type": "test.message", "text": "Ahoy-hoy!"})
    assert await receive_within(layer, "test.channel") == {
        "type": "test.message",
        "text": "Ahoy-hoy!",
    }


async def test_process_local_channel_delivers_a_sent_message(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    channel = await layer.new_channel()
    assert "!" in channel
    await layer.send(channel, {"type": "test.message", "text": "local"})
    assert await receive_within(layer, channel) == {"type": "test.message", "text": "local"}


async def test_new_channel_returns_distinct_names(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    names = {await layer.new_channel() for _ in range(20)}
    assert len(names) == 20


@pytest.mark.parametrize("kind", ["normal", "process-local"])
async def test_messages_keep_their_order(layer_factory: LayerFactory, kind: str) -> None:
    layer = layer_factory()
    channel = "test.order" if kind == "normal" else await layer.new_channel()
    for i in range(10):
        await layer.send(channel, {"type": "n", "i": i})
    assert [(await receive_within(layer, channel))["i"] for _ in range(10)] == list(range(10))


async def test_every_message_type_survives_the_trip(layer_factory: LayerFactory) -> None:
    sender, receiver = layer_factory(), layer_factory()
    channel = await receiver.new_channel()
    await sender.send(channel, ALL_TYPES)
    await sender.send("test.types", ALL_TYPES)
    assert await receive_within(receiver, channel) == ALL_TYPES
    assert await receive_within(receiver, "test.types") == ALL_TYPES


async def test_invalid_names_are_refused(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    for bad in ["=+135!", "with space", "colon:name", "x" * 100, ""]:
        with pytest.raises(TypeError):
            await layer.send(bad, {"type": "t"})
        with pytest.raises(TypeError):
            await layer.receive(bad)
        with pytest.raises(TypeError):
            await layer.group_add("group", bad)
    for bad_group in ["bad!group", "colon:group", "g" * 100]:
        with pytest.raises(TypeError):
            await layer.group_add(bad_group, "test.channel")
        with pytest.raises(TypeError):
            await layer.group_send(bad_group, {"type": "t"})


async def test_send_raises_channel_full_at_capacity(layer_factory: LayerFactory) -> None:
    layer = layer_factory(capacity=3)
    local = await layer.new_channel()
    for channel in ["test.full", local]:
        for _ in range(3):
            await layer.send(channel, {"type": "t"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "t"})


async def test_channel_capacity_overrides_the_default(layer_factory: LayerFactory) -> None:
    layer = layer_factory(capacity=3, channel_capacity={"tiny.*": 1})
    await layer.send("tiny.one", {"type": "t"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny.one", {"type": "t"})
    for _ in range(3):
        await layer.send("roomy.one", {"type": "t"})


async def test_a_received_message_frees_capacity(layer_factory: LayerFactory) -> None:
    layer = layer_factory(capacity=2)
    for _ in range(2):
        await layer.send("test.cap", {"type": "t"})
    await receive_within(layer, "test.cap")
    await layer.send("test.cap", {"type": "t"})


async def test_group_send_reaches_members_only(layer_factory: LayerFactory) -> None:
    sender, receiver = layer_factory(), layer_factory()
    one, two, three = [await receiver.new_channel() for _ in range(3)]
    for channel in (one, two, three, "test.member"):
        await sender.group_add("test.group", channel)
    await sender.group_discard("test.group", two)
    await sender.group_discard("test.group", "test.never-added")
    await sender.group_send("test.group", {"type": "group.message"})
    for channel in (one, three, "test.member"):
        assert await receive_within(receiver, channel) == {"type": "group.message"}
    await assert_nothing_arrives(receiver, two)


async def test_group_add_twice_delivers_once(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    channel = await layer.new_channel()
    await layer.group_add("test.group", channel)
    await layer.group_add("test.group", channel)
    await layer.group_send("test.group", {"type": "once"})
    assert await receive_within(layer, channel) == {"type": "once"}
    await assert_nothing_arrives(layer, channel)


async def test_group_send_to_an_empty_group_does_nothing(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    await layer.group_send("test.nobody", {"type": "t"})


async def test_group_send_drops_over_capacity_without_raising(
    layer_factory: LayerFactory,
) -> None:
    layer = layer_factory(capacity=3)
    local = await layer.new_channel()
    for channel in ("test.slow", local):
        await layer.group_add("test.group", channel)
    for i in range(5):
        await layer.group_send("test.group", {"type": "t", "i": i})
    for channel in ("test.slow", local):
        received = [(await receive_within(layer, channel))["i"] for _ in range(3)]
        assert received == [0, 1, 2]
        await assert_nothing_arrives(layer, channel, 0.3)


async def test_messages_and_memberships_expire(layer_factory: LayerFactory) -> None:
    layer = layer_factory(expiry=1, group_expiry=1)
    local = await layer.new_channel()
    member = await layer.new_channel()
    await layer.send("test.stale", {"type": "t"})
    await layer.send(local, {"type": "t"})
    await layer.group_add("test.group", member)
    # Long enough for channels_redis too, which rounds group expiry down to whole seconds.
    await asyncio.sleep(2.1)
    await layer.group_send("test.group", {"type": "t"})
    await assert_nothing_arrives(layer, "test.stale")
    await assert_nothing_arrives(layer, local, 0.2)
    await assert_nothing_arrives(layer, member, 0.2)


async def test_flush_empties_channels_and_groups(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    local = await layer.new_channel()
    await layer.send("test.flushed", {"type": "t"})
    await layer.send(local, {"type": "t"})
    await layer.group_add("test.group", "test.member")
    await layer.flush()
    await layer.group_send("test.group", {"type": "t"})
    await assert_nothing_arrives(layer, "test.flushed")
    await assert_nothing_arrives(layer, local, 0.2)
    await assert_nothing_arrives(layer, "test.member", 0.2)
    # Still usable afterwards.
    await layer.send("test.flushed", {"type": "after"})
    assert await receive_within(layer, "test.flushed") == {"type": "after"}


async def test_two_instances_exchange_messages(layer_factory: LayerFactory) -> None:
    first, second = layer_factory(), layer_factory()
    first_local = await first.new_channel()
    second_local = await second.new_channel()
    await first.send(second_local, {"type": "to.second"})
    await second.send(first_local, {"type": "to.first"})
    await second.send("test.shared", {"type": "shared"})
    assert await receive_within(second, second_local) == {"type": "to.second"}
    assert await receive_within(first, first_local) == {"type": "to.first"}
    assert await receive_within(first, "test.shared") == {"type": "shared"}


async def test_a_normal_channel_message_goes_to_one_receiver(layer_factory: LayerFactory) -> None:
    first, second, sender = layer_factory(), layer_factory(), layer_factory()
    receivers = [
        asyncio.create_task(first.receive("test.work")),
        asyncio.create_task(second.receive("test.work")),
    ]
    await asyncio.sleep(0.2)
    await sender.send("test.work", {"type": "job", "n": 1})
    done, pending = await asyncio.wait(receivers, timeout=3, return_when=asyncio.FIRST_COMPLETED)
    assert [task.result() for task in done] == [{"type": "job", "n": 1}]
    await sender.send("test.work", {"type": "job", "n": 2})
    assert (await asyncio.wait_for(pending.pop(), 3)) == {"type": "job", "n": 2}


@pytest.mark.parametrize("kind", ["normal", "process-local"])
async def test_a_cancelled_receive_loses_no_message(layer_factory: LayerFactory, kind: str) -> None:
    layer, sender = layer_factory(), layer_factory()
    channel = "test.cancel" if kind == "normal" else await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await sender.send(channel, {"type": "kept"})
    assert await receive_within(layer, channel) == {"type": "kept"}
