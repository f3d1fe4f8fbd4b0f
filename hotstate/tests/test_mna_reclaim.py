"""MODEL_NOT_AVAILABLE reports left pending are taken over, and hopeless ones given up.

A reader that dies before acknowledging leaves its reports in the group's pending list; before
``mna_claim`` nothing read them again (a group hands out only new entries, and a dead reader's
random name never came back). A report whose handling always fails would cycle for ever once
it can be taken over, so it is given up after ``max_deliveries`` and counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.mna import (
    MNA_GROUP,
    MnaEvent,
    MnaReader,
    mna_dead_letters,
    mna_enqueue,
    mna_read,
    mna_seat,
)

IDLE_MS = 300
WAIT_S = 10.0


Report = tuple[int, str]  # (stream shard, entry id): entry ids are unique per shard only


def report(event: MnaEvent) -> Report:
    return (event.shard, event.entry_id)


async def enqueue(client: RedisCluster, count: int) -> set[Report]:
    return {
        (
            keys.mna_stream_shard(f"node-{n}"),
            await mna_enqueue(
                node_id=f"node-{n}", service_id="asr", service_version=None, reason="oom",
                job_id=f"job-{n}", attempt=1, client=client,
            ),
        )
        for n in range(count)
    }  # fmt: skip


async def pending(client: RedisCluster) -> int:
    total = 0
    for shard in range(keys.MNA_STREAM_SHARDS):
        if await client.exists(keys.mna_stream(shard)):
            groups = await client.xinfo_groups(keys.mna_stream(shard))
            total += sum(int(group["pending"]) for group in groups)
    return total


async def turns_until(
    reader: MnaReader,
    handle: Callable[[MnaEvent], Awaitable[object]],
    client: RedisCluster,
    done: Callable[[], Awaitable[bool]],
) -> None:
    """Run ``reader``'s turns (as the duty does) until ``done``; fail after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not await done():
            await reader.turn(handle, block_ms=10, client=client)


def quick(holder: str, **options: int) -> MnaReader:
    return MnaReader(holder=holder, claim_idle_ms=IDLE_MS, claim_every_s=0.0, **options)  # type: ignore[arg-type]


async def test_reports_of_a_reader_that_died_are_handled_by_another_after_the_idle_bound(
    hot: RedisCluster,
) -> None:
    entries = await enqueue(hot, 40)
    # The first reader takes every report and dies before handling or acknowledging any.
    dead = quick("dead-process")
    consumer = await dead.seat(hot)
    loop = asyncio.get_running_loop()
    read_at = loop.time()  # at or before the delivery, from which Redis counts the idle time
    taken = await mna_read(consumer=consumer, count=100, client=hot)
    assert {report(event) for event in taken} == entries

    handled: Counter[Report] = Counter()
    handled_at: list[float] = []

    async def handle(event: MnaEvent) -> None:
        handled[report(event)] += 1
        handled_at.append(loop.time())

    async def all_handled() -> bool:
        return set(handled) == entries

    survivor = quick("live-process")
    await turns_until(survivor, handle, hot, all_handled)
    assert handled == Counter(dict.fromkeys(entries, 1))
    # Not taken from a reader that may still be busy (10 ms: Redis counts whole milliseconds).
    assert min(handled_at) - read_at >= IDLE_MS / 1000 - 0.01
    assert await pending(hot) == 0
    assert await mna_dead_letters(client=hot) == 0
    assert survivor.consumer != dead.consumer


async def test_a_report_that_always_fails_is_given_up_after_n_deliveries_and_counted(
    hot: RedisCluster,
) -> None:
    (entry,) = await enqueue(hot, 1)
    attempts: Counter[Report] = Counter()

    async def failing(event: MnaEvent) -> None:
        attempts[report(event)] += 1
        raise RuntimeError("the handler always fails")

    async def given_up() -> bool:
        return await mna_dead_letters(client=hot) == 1

    reader = quick("w1", max_deliveries=3)
    await turns_until(reader, failing, hot, given_up)
    assert attempts == {entry: 3}
    assert await pending(hot) == 0
    # It never comes back, and other reports are still handled.
    (other,) = await enqueue(hot, 1)
    handled: list[Report] = []

    async def handle(event: MnaEvent) -> None:
        handled.append(report(event))

    await asyncio.sleep(IDLE_MS / 1000)  # past the idle bound: a pending entry would be claimed
    await reader.turn(handle, block_ms=10, client=hot)
    assert handled == [other] and attempts == {entry: 3}
    assert await mna_dead_letters(client=hot) == 1


async def test_a_report_whose_handling_failed_once_is_handled_on_its_next_delivery(
    hot: RedisCluster,
) -> None:
    (entry,) = await enqueue(hot, 1)
    calls: list[Report] = []

    async def flaky(event: MnaEvent) -> None:
        calls.append(report(event))
        if len(calls) == 1:
            raise RuntimeError("Redis hiccup")

    async def settled() -> bool:
        return len(calls) == 2 and await pending(hot) == 0

    await turns_until(quick("w1"), flaky, hot, settled)
    assert calls == [entry, entry]
    assert await mna_dead_letters(client=hot) == 0


async def test_readers_get_distinct_seats_kept_while_renewed_and_freed_after_their_ttl(
    hot: RedisCluster,
) -> None:
    seats = [await mna_seat(holder=f"p{n}", ttl_ms=300, seats=3, client=hot) for n in range(3)]
    assert seats == [0, 1, 2]
    assert await mna_seat(holder="p1", ttl_ms=300, seats=3, client=hot) == 1  # renewed
    assert await mna_seat(holder="late", ttl_ms=300, seats=3, client=hot) is None  # all held
    # A group's seats are its own.
    assert await mna_seat(holder="late", group="other", ttl_ms=300, seats=3, client=hot) == 0

    async def freed() -> int | None:
        async with asyncio.timeout(WAIT_S):
            while True:
                for holder in ("p0", "p2"):
                    await mna_seat(holder=holder, ttl_ms=300, seats=3, client=hot)
                seat = await mna_seat(holder="late", ttl_ms=300, seats=3, client=hot)
                if seat is not None:
                    return seat
                await asyncio.sleep(0.05)

    # p1 stopped renewing: its seat (and so its consumer name) goes to the next process.
    assert await freed() == 1


async def test_the_duty_reader_uses_the_default_group(hot: RedisCluster) -> None:
    await enqueue(hot, 1)
    reader = MnaReader(holder="w1")
    handled: list[MnaEvent] = []

    async def handle(event: MnaEvent) -> None:
        handled.append(event)

    turn = await reader.turn(handle, block_ms=10, client=hot)
    assert (turn.read, turn.handled, turn.claimed, turn.dead) == (1, 1, 0, 0)
    assert reader.group == MNA_GROUP and reader.consumer == "seat-0"
