"""Sessions: ownership, resume within the TTL, and the outbox that delivers each result once:
bounded reads, bounded tombstones, and the results a session is owed."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.sessions import (
    session_close,
    session_outbox_sweep,
    session_owner_get,
    session_renew,
    session_result_expect,
    session_result_put,
    session_result_return,
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
    assert await session_result_take(session_id="s1", job_id="j1", token="x1", client=hot) == "{}"


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
        *(
            session_result_take(session_id="s1", job_id="j1", token=f"t{n}", client=hot)
            for n in range(10)
        )
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


async def test_tombstones_are_pruned_by_age_and_capped_by_count(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    for n in range(6):
        await session_result_put(session_id="s1", job_id=f"j{n}", frame_json="A", client=hot)
        await session_result_take(
            session_id="s1", job_id=f"j{n}", token=f"t{n}", keep_ms=TTL, max_taken=4, client=hot
        )
    # The newest four are kept; a repeat of one of them is still refused.
    taken = await hot.zrange(keys.session_taken("s1"), 0, -1)
    assert taken == ["j2", "j3", "j4", "j5"]
    assert not await session_result_put(session_id="s1", job_id="j5", frame_json="A", client=hot)
    assert await hot.hlen(keys.session_outbox("s1")) == 0
    # Older than keep_ms: pruned by the next take.
    await asyncio.sleep(0.05)
    await session_result_put(session_id="s1", job_id="j9", frame_json="A", client=hot)
    await session_result_take(session_id="s1", job_id="j9", token="t9", keep_ms=20, client=hot)
    assert await hot.zrange(keys.session_taken("s1"), 0, -1) == ["j9"]
    assert 0 < await hot.pttl(keys.session_taken("s1")) <= TTL


async def test_reads_of_a_large_outbox_are_bounded_and_reach_every_result(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    for n in range(40):
        await session_result_put(session_id="s1", job_id=f"j{n}", frame_json="F", client=hot)
    seen: set[str] = set()
    while page := await session_results_pending(session_id="s1", limit=8, client=hot):
        assert len(page) <= 8
        for job_id in page:
            assert (
                await session_result_take(session_id="s1", job_id=job_id, token=job_id, client=hot)
                == "F"
            )
            seen.add(job_id)
    assert seen == {f"j{n}" for n in range(40)}
    swept = await session_outbox_sweep(
        session_id="s1", pending_limit=8, due_limit=8, recheck_ms=1000, client=hot
    )
    assert swept.pending == () and swept.due == ()


async def test_a_frame_taken_but_not_sent_goes_back_and_is_taken_once_more(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    frame = await session_result_take(session_id="s1", job_id="j1", token="x2", client=hot)
    assert frame == "A"
    assert await session_result_return(session_id="s1", job_id="j1", frame_json=frame, client=hot)
    assert await session_results_pending(session_id="s1", client=hot) == ["j1"]
    assert await session_result_take(session_id="s1", job_id="j1", token="x3", client=hot) == "A"
    assert await session_result_take(session_id="s1", job_id="j1", token="x4", client=hot) is None
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)


async def test_an_expected_result_is_due_after_its_grace_until_its_result_is_put(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    assert await session_result_expect(
        session_id="s1", job_id="j1", request_id="r1", check_after_ms=0, client=hot
    )
    assert await session_result_expect(
        session_id="s1", job_id="j2", request_id="r2", check_after_ms=60_000, client=hot
    )

    async def sweep() -> tuple[tuple[str, str], ...]:
        swept = await session_outbox_sweep(
            session_id="s1", pending_limit=8, due_limit=8, recheck_ms=50, client=hot
        )
        return swept.due

    assert await sweep() == (("j1", "r1"),)
    assert await sweep() == ()  # checked again only recheck_ms later
    await asyncio.sleep(0.06)
    assert await sweep() == (("j1", "r1"),)
    await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    await asyncio.sleep(0.06)
    assert await sweep() == ()
    # A result stored or taken already is not expected again.
    assert not await session_result_expect(
        session_id="s1", job_id="j1", request_id="r1", check_after_ms=0, client=hot
    )
    await session_result_take(session_id="s1", job_id="j1", token="x5", client=hot)
    assert not await session_result_expect(
        session_id="s1", job_id="j1", request_id="r1", check_after_ms=0, client=hot
    )
    assert await sweep() == ()
    for key in (keys.session_expected("s1"), keys.session_expected_requests("s1")):
        assert 0 < await hot.pttl(key) <= TTL


async def test_expectations_expire_with_the_session(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await session_result_expect(
        session_id="s1", job_id="j1", request_id="r1", check_after_ms=0, client=hot
    )
    await session_close(session_id="s1", channel="c1", resume_ttl_ms=100, client=hot)
    await asyncio.sleep(0.15)
    for key in keys.session_keys("s1"):
        assert not await hot.exists(key)
    assert not await session_result_expect(
        session_id="s1", job_id="j2", request_id="r2", check_after_ms=0, client=hot
    )


async def test_a_tombstone_left_in_the_outbox_by_an_earlier_version_moves_out(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await hot.hset(keys.session_outbox("s1"), "j1", "")
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    assert await session_result_take(session_id="s1", job_id="j1", token="x6", client=hot) is None
    assert await session_results_pending(session_id="s1", client=hot) == []
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)


async def test_a_take_whose_answer_was_lost_is_taken_again_by_its_token_only(
    hot: RedisCluster,
) -> None:
    """A take that timed out may still run when the frozen server wakes up: the frame leaves
    the outbox and its answer goes nowhere. Repeating it with the same token gets it back."""
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    # The take runs on the server; its answer never reaches the socket.
    await session_result_take(session_id="s1", job_id="j1", token="c1#1", client=hot)
    assert await session_results_pending(session_id="s1", client=hot) == []

    assert await session_result_take(session_id="s1", job_id="j1", token="c2#1", client=hot) is None
    assert await session_result_take(session_id="s1", job_id="j1", token="c1#1", client=hot) == "A"
    assert await session_result_take(session_id="s1", job_id="j1", token="c1#1", client=hot) == "A"
    assert await session_result_take(session_id="s1", job_id="j1", token="c1#2", client=hot) is None
    # Still taken once: a late repeat of the delivery cannot store it again.
    assert not await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)


async def test_a_frame_put_back_and_taken_by_another_socket_is_not_its_first_takers(
    hot: RedisCluster,
) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    await session_result_put(session_id="s1", job_id="j1", frame_json="A", client=hot)
    frame = await session_result_take(session_id="s1", job_id="j1", token="c1#1", client=hot)
    assert frame == "A"
    await session_result_return(session_id="s1", job_id="j1", frame_json=frame, client=hot)
    assert await session_result_take(session_id="s1", job_id="j1", token="c2#1", client=hot) == "A"
    assert await session_result_take(session_id="s1", job_id="j1", token="c1#1", client=hot) is None
    assert await session_result_take(session_id="s1", job_id="j1", token="c2#1", client=hot) == "A"


async def test_handed_over_copies_are_pruned_by_age_and_capped_by_count(hot: RedisCluster) -> None:
    await session_start(session_id="s1", tenant="acme", channel="c1", resume_ttl_ms=TTL, client=hot)
    handed = keys.session_handed("s1")

    async def take(job_id: str, **limits: int) -> str | None:
        return await session_result_take(
            session_id="s1", job_id=job_id, token=f"t-{job_id}", client=hot, **limits
        )

    for n in range(6):
        await session_result_put(session_id="s1", job_id=f"j{n}", frame_json="A", client=hot)
        assert await take(f"j{n}", handed_ms=TTL, max_handed=4) == "A"
    assert sorted(await hot.hkeys(handed)) == ["j2", "j3", "j4", "j5"]
    assert await take("j1") is None
    assert await take("j5") == "A"
    # Older than handed_ms: pruned by the next call, a bounded number at a time.
    await session_result_put(session_id="s1", job_id="j9", frame_json="A", client=hot)
    await take("j9", handed_ms=TTL)
    await asyncio.sleep(0.05)
    assert await take("j9", handed_ms=20) is None
    assert await hot.hlen(handed) == 0
    assert await hot.zcard(keys.session_handed_at("s1")) == 0
    await session_result_put(session_id="s1", job_id="j10", frame_json="A", client=hot)
    await take("j10", handed_ms=100)
    assert 0 < await hot.pttl(handed) <= 100
    assert 0 < await hot.pttl(keys.session_handed_at("s1")) <= 100


async def test_a_take_token_is_one_line(hot: RedisCluster) -> None:
    for token in ("", "a\nb"):
        with pytest.raises(ValueError):
            await session_result_take(session_id="s1", job_id="j1", token=token, client=hot)
