"""Sessions: ownership, resume within the TTL, and the outbox that delivers each result once."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.sessions import (
    session_close,
    session_owner_get,
    session_renew,
    session_result_put,
    session_result_take,
    session_results_pending,
    session_resume,
    session_start,
)

TTL = 5000


async def test_a_started_session_is_owned_by_its_socket(hot: RedisCluster) -> None:
    assert await session_start(
        session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot
    )
    assert not await session_start(
        session_id="s1", tenant="acme", channel="c2", resume_ttl_ms=TTL, client=hot
    )
    assert await session_owner_get(session_id="s1", client=hot) == "c1"


async def test_a_closed_session_resumes_on_another_socket_with_its_results(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert await session_close(session_id="s1", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert await session_owner_get(session_id="s1", client=hot) is None
    # A result finishes while the session is away.
    assert await session_result_put(session_id="s1", job_id="j1", frame_json="{}", client=hot)
    resumed = await session_resume(
        session_id="s1", tenant="acme", channel="c2", resume_ttl_ms=TTL, client=hot
    )
    assert (resumed.resumed, resumed.previous_channel) == (True, None)
    assert await session_results_pending(session_id="s1", client=hot) == ["j1"]
    assert await session_result_take(session_id="s1", job_id="j1", client=hot) == "{}"


async def test_resuming_an_open_session_replaces_the_older_socket(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    resumed = await session_resume(
        session_id="s1", tenant="acme", channel="c2", resume_ttl_ms=TTL, client=hot
    )
    assert (resumed.resumed, resumed.previous_channel) == (True, "c1")
    # The replaced socket's close and renew change nothing.
    assert not await session_close(session_id="s1", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert not await session_renew(session_id="s1", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert await session_owner_get(session_id="s1", client=hot) == "c2"


async def test_an_unknown_expired_or_foreign_session_is_not_resumed(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    foreign = await session_resume(
        session_id="s1", tenant="globex", channel="c9", resume_ttl_ms=TTL, client=hot
    )
    unknown = await session_resume(
        session_id="nope", tenant="acme", channel="c9", resume_ttl_ms=TTL, client=hot
    )
    assert not foreign.resumed and not unknown.resumed
    await session_start(session_id="s2", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await session_close(session_id="s2", channel="c1", resume_ttl_ms=100, client=hot)
    await asyncio.sleep(0.15)
    expired = await session_resume(
        session_id="s2", tenant="acme", channel="c2", resume_ttl_ms=TTL, client=hot
    )
    assert not expired.resumed
    assert not await session_result_put(session_id="s2", job_id="j1", frame_json="{}", client=hot)


async def test_a_result_is_stored_once_and_taken_once(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="B", client=hot)
    takes = await asyncio.gather(
        *(session_result_take(session_id="s1", job_id="j1", client=hot) for _ in range(10))
    )
    assert [t for t in takes if t is not None] == ["A"]
    # A late repeat of the delivery cannot store it again.
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    assert await session_results_pending(session_id="s1", client=hot) == []


async def test_renewal_keeps_record_owner_and_outbox_together(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=200, client=hot)
    await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    await asyncio.sleep(0.1)
    assert await session_renew(session_id="s1", channel="c1", resume_ttl_ms=TTL, client=hot)
    await asyncio.sleep(0.15)
    for key in (keys.session_record("s1"), keys.session_owner("s1"), keys.session_outbox("s1")):
        assert await hot.pttl(key) > 1000
