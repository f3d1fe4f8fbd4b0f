"""Job records: idempotent create, fenced transitions, final terminal states, subscriptions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from hotstate import keys
from hotstate.codes import BadState, Forbidden, JobNotFound, StaleAttempt
from hotstate.jobs import JobState, job_create, job_get, job_subscribe, job_transition
from hotstate.tests.helpers import new_job

S = JobState


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A client that returns bytes, for DUMP (the stored value, byte for byte)."""
    client = RedisCluster.from_url(redis_cluster_url, decode_responses=False)
    yield client
    await client.aclose()


async def dispatched(client: RedisCluster, job_id: str, node_id: str = "nA") -> None:
    await new_job(client, job_id)
    await job_transition(job_id=job_id, attempt=1, to=S.DISPATCHED, node_id=node_id, client=client)


async def test_create_is_idempotent_and_subscribes_every_submitter(hot: RedisCluster) -> None:
    common = dict(
        job_id="j1",
        tenant="acme",
        request_id="r1",
        service_id="asr",
        service_version="v1",
        features=["gpu"],
        payload_json='{"a": 1}',
        timeout_ms=30_000,
        client=hot,
    )
    first = await job_create(session_id="s1", **common)  # type: ignore[arg-type]
    second = await job_create(session_id="s2", **common)  # type: ignore[arg-type]
    assert (first.created, second.created) == (True, False)
    assert first.deadline_ms == second.deadline_ms
    view = await job_get(job_id="j1", client=hot)
    assert view is not None
    assert (view.state, view.attempt, view.node_id) == (S.CREATED, 1, None)
    assert view.deadline_ms - view.created_ms == 30_000
    assert view.subscribers == {"s1", "s2"}
    assert (view.service_id, view.service_version, view.features) == ("asr", "v1", ("gpu",))
    assert json.loads(view.payload_json) == {"a": 1}
    assert 0 < await hot.pttl(keys.job_record("j1")) <= 30_000 + 300_000


async def test_create_refuses_a_job_id_of_another_tenant(hot: RedisCluster) -> None:
    await new_job(hot, "j1", tenant="acme")
    with pytest.raises(Forbidden):
        await new_job(hot, "j1", tenant="globex")


async def test_the_happy_path_reaches_finished_with_its_result(hot: RedisCluster) -> None:
    await dispatched(hot, "j1")
    for to in (S.ACCEPTED, S.RUNNING):
        moved = await job_transition(job_id="j1", attempt=1, to=to, node_id="nA", client=hot)
        assert moved.applied and moved.state is to
    done = await job_transition(
        job_id="j1",
        attempt=1,
        to=S.FINISHED,
        node_id="nA",
        result_json='{"text": "hi"}',
        client=hot,
    )
    assert (done.applied, done.state, done.subscribers) == (True, S.FINISHED, ("s1",))
    view = await job_get(job_id="j1", client=hot)
    assert view is not None and view.result_json == '{"text": "hi"}' and view.finished_ms


async def test_a_stale_attempt_is_refused_and_changes_nothing(
    hot: RedisCluster, raw: RedisCluster
) -> None:
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.CREATED, client=hot)  # failover: attempt 2
    await job_transition(job_id="j1", attempt=2, to=S.DISPATCHED, node_id="nB", client=hot)
    before = await raw.dump(keys.job_record("j1"))
    for stale in (1, 3):
        with pytest.raises(StaleAttempt) as refused:
            await job_transition(
                job_id="j1",
                attempt=stale,
                to=S.FINISHED,
                node_id="nB",
                result_json="{}",
                client=hot,
            )
        assert (refused.value.state, refused.value.attempt) == ("DISPATCHED", 2)
        assert refused.value.protocol_code == "STALE_ATTEMPT"
    # The old node's late ack of attempt 1 is stale too, even though it names itself.
    with pytest.raises(StaleAttempt):
        await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    assert await raw.dump(keys.job_record("j1")) == before


async def test_a_foreign_nodes_transition_is_refused_and_changes_nothing(
    hot: RedisCluster, raw: RedisCluster
) -> None:
    await dispatched(hot, "j1", node_id="nA")
    before = await raw.dump(keys.job_record("j1"))
    for to in (S.ACCEPTED, S.RUNNING, S.FINISHED, S.FAILED):
        with pytest.raises(Forbidden) as refused:
            await job_transition(job_id="j1", attempt=1, to=to, node_id="nB", client=hot)
        assert (refused.value.node_id, refused.value.protocol_code) == ("nA", "FORBIDDEN")
    assert await raw.dump(keys.job_record("j1")) == before


async def test_an_unknown_job_is_not_found(hot: RedisCluster) -> None:
    with pytest.raises(JobNotFound) as refused:
        await job_transition(job_id="nope", attempt=1, to=S.CANCELLED, client=hot)
    assert refused.value.protocol_code == "JOB_NOT_FOUND"
    with pytest.raises(JobNotFound):
        await job_subscribe(job_id="nope", tenant="acme", session_id="s1", client=hot)


async def test_a_repeated_result_is_a_harmless_duplicate(
    hot: RedisCluster, raw: RedisCluster
) -> None:
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    first = await job_transition(
        job_id="j1", attempt=1, to=S.FINISHED, node_id="nA", result_json='{"n": 1}', client=hot
    )
    before = await raw.dump(keys.job_record("j1"))
    repeat = await job_transition(
        job_id="j1", attempt=1, to=S.FINISHED, node_id="nA", result_json='{"n": 2}', client=hot
    )
    assert first.applied and first.subscribers == ("s1",)
    # Not applied, no subscribers handed out again: the session gets exactly one result.
    assert (repeat.applied, repeat.state, repeat.subscribers) == (False, S.FINISHED, ())
    assert await raw.dump(keys.job_record("j1")) == before


async def test_terminal_states_are_final(hot: RedisCluster, raw: RedisCluster) -> None:
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.CANCELLED, error_code="CANCELLED", client=hot)
    before = await raw.dump(keys.job_record("j1"))
    for to, node in ((S.FINISHED, "nA"), (S.TIMED_OUT, None), (S.CREATED, None), (S.FAILED, "nA")):
        with pytest.raises(BadState) as refused:
            await job_transition(job_id="j1", attempt=1, to=to, node_id=node, client=hot)
        assert refused.value.state == "CANCELLED"
    assert await raw.dump(keys.job_record("j1")) == before


async def test_states_cannot_be_skipped(hot: RedisCluster) -> None:
    await new_job(hot, "j1")
    with pytest.raises(BadState):  # a node cannot run a job never dispatched to it
        await job_transition(job_id="j1", attempt=1, to=S.CREATED, client=hot)
    await job_transition(job_id="j1", attempt=1, to=S.DISPATCHED, node_id="nA", client=hot)
    with pytest.raises(BadState):  # running before the node acked it
        await job_transition(job_id="j1", attempt=1, to=S.RUNNING, node_id="nA", client=hot)


async def test_a_result_before_the_ack_finishes_the_job(hot: RedisCluster) -> None:
    await dispatched(hot, "j1", node_id="nA")
    moved = await job_transition(
        job_id="j1", attempt=1, to=S.FINISHED, node_id="nA", result_json="{}", client=hot
    )
    assert (moved.applied, moved.state) == (True, S.FINISHED)


async def test_failover_moves_back_to_created_with_the_next_attempt(hot: RedisCluster) -> None:
    await dispatched(hot, "j1", node_id="nA")
    await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    moved = await job_transition(
        job_id="j1",
        attempt=1,
        to=S.CREATED,
        from_states=[S.DISPATCHED, S.ACCEPTED, S.RUNNING],
        client=hot,
    )
    assert (moved.applied, moved.state, moved.attempt, moved.node_id) == (
        True,
        S.CREATED,
        2,
        None,
    )
    again = await job_transition(job_id="j1", attempt=2, to=S.DISPATCHED, node_id="nB", client=hot)
    assert (again.attempt, again.node_id) == (2, "nB")


async def test_the_expected_state_is_compared(hot: RedisCluster) -> None:
    """An ack timeout fails over only a job still DISPATCHED: the ack may have won."""
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    with pytest.raises(BadState):
        await job_transition(
            job_id="j1", attempt=1, to=S.CREATED, from_states=[S.DISPATCHED], client=hot
        )


async def test_racing_failovers_apply_once(hot: RedisCluster) -> None:
    """Node loss, ack timeout and a MODEL_NOT_AVAILABLE report all fail over attempt 1 at once."""
    await dispatched(hot, "j1")
    results = await asyncio.gather(
        *(job_transition(job_id="j1", attempt=1, to=S.CREATED, client=hot) for _ in range(10)),
        return_exceptions=True,
    )
    applied = [r for r in results if not isinstance(r, BaseException) and r.applied]
    assert len(applied) == 1 and applied[0].attempt == 2
    assert all(isinstance(r, StaleAttempt) for r in results if r is not applied[0])


async def test_racing_terminal_reports_end_the_job_once(hot: RedisCluster) -> None:
    """The result, a cancel and the timeout race; exactly one ends the job."""
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    calls = [
        call
        for _ in range(3)
        for call in (
            job_transition(job_id="j1", attempt=1, to=S.FINISHED, node_id="nA", client=hot),
            job_transition(job_id="j1", attempt=1, to=S.CANCELLED, client=hot),
            job_transition(job_id="j1", attempt=1, to=S.TIMED_OUT, client=hot),
        )
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    applied = [r for r in results if not isinstance(r, BaseException) and r.applied]
    assert len(applied) == 1 and applied[0].subscribers == ("s1",)
    # The losers either repeat the winner's state (duplicate) or find the job already ended.
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, BadState) and result.state == applied[0].state
        elif result is not applied[0]:
            assert (result.applied, result.state, result.subscribers) == (
                False,
                applied[0].state,
                (),
            )
    view = await job_get(job_id="j1", client=hot)
    assert view is not None and view.state is applied[0].state


async def test_every_subscriber_gets_the_result_exactly_once(hot: RedisCluster) -> None:
    """Sessions subscribe while the job finishes: each one is served by exactly one path.

    Either the terminal transition lists it (subscribed before), or its own subscribe call sees
    the terminal state (subscribed after); never both, never neither.
    """
    await dispatched(hot, "j1")
    await job_transition(job_id="j1", attempt=1, to=S.ACCEPTED, node_id="nA", client=hot)
    sessions = [f"s{i}" for i in range(2, 60)]

    async def subscribe(session_id: str) -> tuple[str, bool]:
        status = await job_subscribe(job_id="j1", tenant="acme", session_id=session_id, client=hot)
        return session_id, status.state.terminal

    finish = job_transition(
        job_id="j1", attempt=1, to=S.FINISHED, node_id="nA", result_json="{}", client=hot
    )
    half = len(sessions) // 2
    results = await asyncio.gather(
        *(subscribe(s) for s in sessions[:half]), finish, *(subscribe(s) for s in sessions[half:])
    )
    transition = results[half]
    subscriptions = results[:half] + results[half + 1 :]
    served_by_transition = set(transition.subscribers)  # type: ignore[union-attr]
    served_by_subscribe = {s for s, terminal in subscriptions if terminal}  # type: ignore[misc]
    # Both paths were taken, or the race was not forced.
    assert served_by_transition - {"s1"} and served_by_subscribe
    assert served_by_transition.isdisjoint(served_by_subscribe)
    assert served_by_transition | served_by_subscribe == {"s1", *sessions}


async def test_another_tenant_cannot_subscribe(hot: RedisCluster) -> None:
    await new_job(hot, "j1", tenant="acme")
    with pytest.raises(JobNotFound):
        await job_subscribe(job_id="j1", tenant="globex", session_id="s9", client=hot)
    view = await job_get(job_id="j1", client=hot)
    assert view is not None and view.subscribers == {"s1"}


async def test_a_transition_to_a_node_state_must_name_the_node(hot: RedisCluster) -> None:
    with pytest.raises(ValueError, match="must name the node"):
        await job_transition(job_id="j1", attempt=1, to=S.DISPATCHED, client=hot)
