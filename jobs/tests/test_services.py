"""The job life cycle beyond the happy path: timeouts, failover, slots (PROTOCOL.md, Job states).

Driven through real sockets, since what matters is what the node and the session see; the
services are also called directly where an interface cannot reach a case.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from core.errors import BadMessage, JobNotFound, PayloadTooLarge, UnknownService
from hotstate import jobs as hjobs
from hotstate.jobs import JobState
from jobs import services as jobs
from jobs.selectors import job_view
from protocol import JobSubmit, ServiceRef
from tests.support.inprocess import (
    accepted_job,
    beating,
    job_state,
    new_api_key,
    online_node,
    online_session,
    reply,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


def job_submit(request_id: str = "r-1", **fields: Any) -> JobSubmit:
    return JobSubmit(
        request_id=request_id, service=ServiceRef(id="asr"), payload={"a": 1}, **fields
    )


# --- slots ----------------------------------------------------------------------------------------


async def test_a_slot_freed_by_a_result_is_usable_by_the_next_submit_at_once() -> None:
    _, node = await online_node("one-slot", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    for request_id in ("r-1", "r-2", "r-3"):
        assign = await accepted_job(session, node, request_id)
        await node.send(reply(assign, "job_ack"))
        await node.send(reply(assign, "job_result", ok=True))
        assert (await session.receive())["job_id"] == assign["job_id"]


async def test_a_slot_freed_by_a_failed_result_is_usable_at_once() -> None:
    _, node = await online_node("one-slot", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=False, error={"code": "BOOM", "message": ""}))
    assert (await session.receive())["error"]["code"] == "BOOM"
    await accepted_job(session, node, "r-2")


# --- timeouts -------------------------------------------------------------------------------------


async def test_a_job_unfinished_at_its_timeout_ends_timed_out_and_the_node_is_told() -> None:
    _, node = await online_node("slowpoke", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    started = time.monotonic()
    assign = await accepted_job(session, node, "r-1", timeout_ms=400)
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_started"))
    cancel = await node.receive(timeout=3)
    assert cancel == {
        "type": "job_cancel",
        "job_id": assign["job_id"],
        "attempt": 1,
        "reason": "JOB_TIMEOUT",
    }
    result = await session.receive(timeout=3)
    assert (result["type"], result["job_id"], result["ok"]) == (
        "job_result",
        assign["job_id"],
        False,
    )
    assert result["error"]["code"] == "JOB_TIMEOUT"
    assert time.monotonic() - started >= 0.4
    assert (await job_state(assign["job_id"]))[0] is JobState.TIMED_OUT
    # Its slot is free at once, and a late result changes nothing.
    await node.send(reply(assign, "job_result", ok=True))
    assert await node.settle() == []
    await accepted_job(session, node, "r-2")
    assert await session.nothing(0.1)


async def test_a_job_never_acked_still_times_out_at_its_own_timeout(settings) -> None:
    settings.ACK_TIMEOUT = 3.0
    _, node = await online_node("mute")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1", timeout_ms=300)
    result = await session.receive(timeout=1.5)
    assert result["error"]["code"] == "JOB_TIMEOUT"
    cancel = await node.receive()
    assert (cancel["type"], cancel["reason"]) == ("job_cancel", "JOB_TIMEOUT")
    assert (await job_state(assign["job_id"]))[0] is JobState.TIMED_OUT


# --- failover -------------------------------------------------------------------------------------


async def test_a_job_not_acked_in_time_moves_to_another_node_as_attempt_2(settings) -> None:
    settings.ACK_TIMEOUT = 0.3
    _, first = await online_node("never-acks")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, first, "r-1")
    second_id, second = await online_node("acks")
    moved = await second.receive(timeout=3)
    assert (moved["type"], moved["job_id"], moved["attempt"]) == ("job_assign", assign["job_id"], 2)
    await second.send(reply(moved, "job_ack"))
    assert await second.settle() == []
    assert await job_state(assign["job_id"]) == (JobState.ACCEPTED, 2, second_id)
    cancel = await first.receive()
    assert cancel == {
        "type": "job_cancel",
        "job_id": assign["job_id"],
        "attempt": 1,
        "reason": "NODE_LOST",
    }
    # The first node's late ack is stale; the session saw nothing of all this.
    await first.send(reply(assign, "job_ack"))
    assert (await first.receive())["code"] == "STALE_ATTEMPT"
    assert await session.nothing(0.1)
    await second.send(reply(moved, "job_result", ok=True, result={"by": 2}))
    assert (await session.receive())["result"] == {"by": 2}
    assert await session.nothing(0.1)


async def test_a_job_on_a_node_that_disconnects_moves_to_another_node(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 200
    _, first = await online_node("leaves")
    _, session = await online_session(await new_api_key("acme"))
    async with beating(first, interval=0.15):
        assign = await accepted_job(session, first, "r-1")
        await first.send(reply(assign, "job_ack"))
        await first.send(reply(assign, "job_started"))
        assert await first.settle() == []
        second_id, second = await online_node("stays")
    async with beating(second, interval=0.15):
        await first.close()
        moved = await second.receive_type("job_assign", timeout=3)
        assert (moved["job_id"], moved["attempt"]) == (assign["job_id"], 2)
        assert await session.nothing(0.05)
        await second.send(reply(moved, "job_ack"))
        await second.send(reply(moved, "job_result", ok=True))
        result = await session.receive()
    assert (result["type"], result["ok"]) == ("job_result", True)
    assert await job_state(assign["job_id"]) == (JobState.FINISHED, 2, second_id)


async def test_a_job_whose_nodes_keep_getting_lost_fails_node_lost_after_max_attempts(
    settings,
) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 200
    settings.MAX_ATTEMPTS = 2
    _, first = await online_node("lost-1")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, first, "r-1")
    await first.send(reply(assign, "job_ack"))
    assert await first.settle() == []
    _, second = await online_node("lost-2")
    async with beating(second, interval=0.15):
        await first.close()
        moved = await second.receive_type("job_assign", timeout=3)
        assert moved["attempt"] == 2
        await second.send(reply(moved, "job_ack"))
        assert await second.settle() == []
    await second.close()
    result = await session.receive(timeout=3)
    assert result == {
        "type": "job_result",
        "job_id": assign["job_id"],
        "request_id": "r-1",
        "ok": False,
        "error": result["error"],
    }
    assert result["error"]["code"] == "NODE_LOST"
    assert (await job_state(assign["job_id"]))[:2] == (JobState.FAILED, 2)
    assert await session.nothing(0.2)


async def test_a_job_whose_model_is_missing_everywhere_fails_model_not_available(
    settings,
) -> None:
    settings.MAX_ATTEMPTS = 1
    _, node = await online_node("no-model")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(
        reply(assign, "model_not_available", service={"id": "asr"}, reason="not downloaded")
    )
    result = await session.receive(timeout=3)
    assert (result["type"], result["ok"]) == ("job_result", False)
    assert result["error"]["code"] == "MODEL_NOT_AVAILABLE"
    assert (await job_state(assign["job_id"]))[0] is JobState.FAILED


# --- services called directly ---------------------------------------------------------------------


def test_submit_validation_refuses_a_large_payload_and_a_long_timeout(settings) -> None:
    settings.MAX_PAYLOAD_BYTES = 20
    settings.MAX_JOB_TIMEOUT_MS = 1000
    settings.DEFAULT_JOB_TIMEOUT_MS = 500
    assert jobs.submit_validate(submit=job_submit()) == (500, '{"a":1}')
    with pytest.raises(BadMessage):
        jobs.submit_validate(submit=job_submit(timeout_ms=1001))
    with pytest.raises(PayloadTooLarge):
        jobs.submit_validate(
            submit=JobSubmit(request_id="r", service=ServiceRef(id="asr"), payload={"a": "x" * 20})
        )


async def test_submit_of_a_never_offered_service_creates_nothing() -> None:
    with pytest.raises(UnknownService):
        await jobs.job_submit(tenant="acme", session_id="s_1", submit=job_submit("r-unknown"))
    claim = await hjobs.request_claim(
        tenant="acme", request_id="r-unknown", job_id="j_x", lease_ms=1000
    )
    assert claim.won


async def test_cancel_and_view_refuse_another_tenants_job() -> None:
    _, node = await online_node("gpu")
    accepted = await jobs.job_submit(tenant="acme", session_id="", submit=job_submit())
    assert (await node.receive())["job_id"] == accepted.job_id
    with pytest.raises(JobNotFound):
        await job_view(tenant="globex", job_id=accepted.job_id)
    with pytest.raises(JobNotFound):
        await jobs.job_cancel(tenant="globex", job_id=accepted.job_id)
    assert (await job_view(tenant="acme", job_id=accepted.job_id)).state is JobState.DISPATCHED
    ended = await jobs.job_cancel(tenant="acme", job_id=accepted.job_id)
    assert ended.state is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        await jobs.job_cancel(tenant="acme", job_id=accepted.job_id)
    assert (await node.receive())["reason"] == "CANCELLED"


async def test_two_racing_cancels_end_the_job_once() -> None:
    _, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    outcomes = await asyncio.gather(
        jobs.job_cancel(tenant="acme", job_id=assign["job_id"]),
        jobs.job_cancel(tenant="acme", job_id=assign["job_id"]),
        return_exceptions=True,
    )
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["JobNotFound", "JobView"]
    assert (await session.receive())["error"]["code"] == "CANCELLED"
    assert (await node.receive())["type"] == "job_cancel"
    assert await session.nothing(0.1)
    assert await node.nothing(0.05)
