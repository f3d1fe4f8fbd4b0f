"""MODEL_NOT_AVAILABLE: enqueue, then mark (rate-limited) and debounce in the worker."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.mna import (
    MnaEvent,
    mna_ack,
    mna_debounce,
    mna_enqueue,
    mna_handle,
    mna_mark,
    mna_read,
)
from hotstate.slots import ReserveOutcome, slot_reserve
from hotstate.tests.helpers import online_node


async def test_a_thousand_reports_in_a_window_have_exactly_one_debounce_winner(
    hot: RedisCluster,
) -> None:
    async def report(number: int) -> bool:
        return await mna_debounce(
            service_id="asr", service_version="v2", token=f"report-{number}", client=hot
        )

    wins = await asyncio.gather(*(report(number) for number in range(1000)))
    assert sum(wins) == 1
    # Another version of the service is another debounce.
    assert await mna_debounce(service_id="asr", service_version="v3", token="x", client=hot)


async def test_the_debounce_window_ends(hot: RedisCluster) -> None:
    kwargs = dict(service_id="asr", service_version=None, window_ms=100, client=hot)
    assert await mna_debounce(token="a", **kwargs)  # type: ignore[arg-type]
    assert not await mna_debounce(token="b", **kwargs)  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert await mna_debounce(token="c", **kwargs)  # type: ignore[arg-type]


async def test_a_thousand_reports_through_the_worker_run_one_action(hot: RedisCluster) -> None:
    """1,000 reports from 20 nodes go through the stream and the worker path: one action."""
    for number in range(1000):
        await mna_enqueue(
            node_id=f"node-{number % 20}", service_id="asr", service_version="v2",
            reason="oom", job_id=f"job-{number}", attempt=1, client=hot,
        )  # fmt: skip
    events: list[MnaEvent] = []
    while batch := await mna_read(consumer="w1", count=500, client=hot):
        events += batch
    assert len(events) == 1000
    assert {event.job_id for event in events} == {f"job-{n}" for n in range(1000)}
    # Two workers handle the events at once.
    halves = [events[0::2], events[1::2]]
    decisions = await asyncio.gather(
        *(asyncio.gather(*(mna_handle(event=e, client=hot) for e in half)) for half in halves)
    )
    flat = [d for half in decisions for d in half]
    assert sum(d.run_action for d in flat) == 1
    # 20 nodes x 50 reports, 30 handled per node per minute (the default), 20 dropped each.
    assert sum(d.marked for d in flat) == 20 * 30
    assert sum(d.dropped for d in flat) == 20 * 20
    assert await mna_ack(events=events, client=hot) == 1000
    assert await mna_read(consumer="w1", client=hot) == []


async def test_a_node_over_its_rate_limit_is_dropped_and_counted(hot: RedisCluster) -> None:
    results = [
        await mna_mark(
            node_id="noisy", service_id=f"svc{n}", service_version=None, rate_limit=5, client=hot
        )
        for n in range(8)
    ]
    assert [r.marked for r in results] == [True] * 5 + [False] * 3
    assert [r.dropped for r in results[5:]] == [1, 2, 3]
    assert await hot.get(keys.node_mna_dropped("noisy")) == "3"
    # Dropped reports left no mark; another node is not limited by the noisy one.
    assert await hot.zscore(keys.node_unavailable("noisy"), "svc7") is None
    quiet = await mna_mark(
        node_id="quiet", service_id="svc0", service_version=None, rate_limit=5, client=hot
    )
    assert quiet.marked and await hot.get(keys.node_mna_dropped("quiet")) is None


async def test_the_rate_window_resets(hot: RedisCluster) -> None:
    kwargs = dict(node_id="n1", service_id="asr", service_version=None, rate_limit=1)
    assert (await mna_mark(rate_window_ms=100, client=hot, **kwargs)).marked  # type: ignore[arg-type]
    assert not (await mna_mark(rate_window_ms=100, client=hot, **kwargs)).marked  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert (await mna_mark(rate_window_ms=100, client=hot, **kwargs)).marked  # type: ignore[arg-type]


async def test_a_handled_report_stops_new_jobs_going_to_that_node(hot: RedisCluster) -> None:
    await online_node(hot, "n1")
    await mna_enqueue(
        node_id="n1", service_id="asr", service_version=None, reason="gone", client=hot
    )
    (event,) = await mna_read(consumer="w1", client=hot)
    decision = await mna_handle(event=event, client=hot)
    assert decision.marked and decision.run_action
    refused = await slot_reserve(node_id="n1", job_id="j1", attempt=1, service_id="asr", client=hot)
    assert refused.outcome is ReserveOutcome.UNAVAILABLE


async def test_an_unacknowledged_report_is_not_read_twice_by_the_group(hot: RedisCluster) -> None:
    await mna_enqueue(node_id="n1", service_id="asr", service_version=None, reason="x", client=hot)
    first = await mna_read(consumer="w1", client=hot)
    second = await mna_read(consumer="w2", client=hot)
    assert len(first) == 1 and second == []
    shard = keys.mna_stream(first[0].shard)
    pending = await hot.xpending(shard, "mna-workers")
    assert pending["pending"] == 1


async def test_the_stream_is_capped(hot: RedisCluster, monkeypatch) -> None:
    from hotstate import mna

    monkeypatch.setattr(mna, "MNA_STREAM_MAXLEN", 10)
    for number in range(300):
        await mna_enqueue(
            node_id="n1", service_id="asr", service_version=None, reason=str(number), client=hot
        )
    length = await hot.xlen(keys.mna_stream(keys.mna_stream_shard("n1")))
    # MAXLEN ~ trims whole radix-tree nodes (100 entries by default), never below the cap.
    assert 10 <= length < 300
