"""The session socket, as a client sees it (PROTOCOL.md, Session ⇄ scheduler)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotstate import jobs as hjobs
from hotstate import keys as hkeys
from hotstate.jobs import JobState
from protocol import MAX_AWAITING
from tests.support.inprocess import (
    Peer,
    accepted_job,
    new_api_key,
    online_node,
    online_session,
    reply,
    session_peer,
    submitted,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


async def finish(node: Peer, assign: dict[str, Any], **result: Any) -> None:
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True, result=result))


def assert_rejected(frame: dict[str, Any], request_id: str, code: str) -> None:
    assert set(frame) == {"type", "request_id", "code", "message"}, frame
    assert (frame["type"], frame["request_id"], frame["code"]) == ("job_rejected", request_id, code)


# --- session_init ---------------------------------------------------------------------------------


async def test_session_init_gets_session_ready_with_a_new_session_id(scheduler) -> None:
    _, ready = await session_peer(await new_api_key("acme"))
    assert ready == {
        "type": "session_ready",
        "session_id": ready["session_id"],
        "instance_id": scheduler.instance_id,
    }
    assert ready["session_id"].startswith("s_")
    _, other = await session_peer(await new_api_key("acme"))
    assert other["session_id"] != ready["session_id"]


# --- job_submit -----------------------------------------------------------------------------------


async def test_a_submit_is_accepted_with_the_node_that_got_it() -> None:
    node_id, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    accepted = await submitted(session, "r-1", timeout_ms=5000, features=[])
    assert accepted == {
        "type": "job_accepted",
        "request_id": "r-1",
        "job_id": accepted["job_id"],
        "node_id": node_id,
    }
    assign = await node.receive()
    assert (assign["type"], assign["job_id"]) == ("job_assign", accepted["job_id"])


async def test_a_submit_for_a_service_no_node_offers_is_rejected_unknown_service() -> None:
    await online_node("asr-only")
    _, session = await online_session(await new_api_key("acme"))
    assert_rejected(await submitted(session, "r-1", service="tts"), "r-1", "UNKNOWN_SERVICE")


async def test_a_submit_when_every_node_is_drained_is_rejected_no_available_node() -> None:
    _, node = await online_node("drained")
    await node.send({"type": "node_drain"})
    assert await node.settle() == []
    _, session = await online_session(await new_api_key("acme"))
    assert_rejected(await submitted(session, "r-1"), "r-1", "NO_AVAILABLE_NODE")


async def test_a_submit_when_every_node_is_full_is_rejected_no_available_node() -> None:
    _, node = await online_node("full", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    await accepted_job(session, node, "r-1")
    assert_rejected(await submitted(session, "r-2"), "r-2", "NO_AVAILABLE_NODE")
    assert await node.nothing(0.05)


async def test_a_submit_needing_a_feature_no_node_has_is_rejected() -> None:
    await online_node("plain")
    _, session = await online_session(await new_api_key("acme"))
    assert_rejected(
        await submitted(session, "r-1", features=["diarization"]), "r-1", "NO_AVAILABLE_NODE"
    )


async def test_a_timeout_above_the_maximum_is_rejected_bad_message(settings) -> None:
    settings.MAX_JOB_TIMEOUT_MS = 10_000
    await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assert_rejected(await submitted(session, "r-1", timeout_ms=10_001), "r-1", "BAD_MESSAGE")
    assert (await submitted(session, "r-1", timeout_ms=10_000))["type"] == "job_accepted"


async def test_a_rejected_request_id_is_not_bound_and_a_retry_is_judged_afresh() -> None:
    _, node = await online_node("busy", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    first = await accepted_job(session, node, "r-1")
    assert_rejected(await submitted(session, "r-2"), "r-2", "NO_AVAILABLE_NODE")
    await finish(node, first)
    assert (await session.receive())["job_id"] == first["job_id"]
    retried = await submitted(session, "r-2")
    assert retried["type"] == "job_accepted"
    assert retried["job_id"] != first["job_id"]
    assert (await node.receive())["job_id"] == retried["job_id"]
    # The rejection itself never produced a job_result.
    assert await session.nothing(0.1)


async def test_the_same_request_id_twice_from_one_session_is_one_job() -> None:
    node_id, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    first = await submitted(session, "r-1")
    again = await submitted(session, "r-1")
    assert again == first == {**first, "node_id": node_id}
    assign = await node.receive()
    assert await node.nothing(0.1)
    await finish(node, assign, text="once")
    result = await session.receive()
    assert (result["type"], result["result"]) == ("job_result", {"text": "once"})
    assert await session.nothing(0.2)


async def test_the_same_request_id_from_two_sessions_of_a_tenant_is_one_job_for_both() -> None:
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    _, one = await online_session(key)
    _, two = await online_session(await new_api_key("acme"))  # another key, same tenant
    first = await submitted(one, "r-1")
    second = await submitted(two, "r-1")
    assert second == first
    assign = await node.receive()
    assert await node.nothing(0.1)
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_progress", progress=0.5))
    for session in (one, two):
        progress = await session.receive()
        assert (progress["type"], progress["request_id"]) == ("job_progress", "r-1")
    await node.send(reply(assign, "job_result", ok=True, result={"text": "shared"}))
    await node.send(reply(assign, "job_result", ok=True, result={"text": "shared"}))
    for session in (one, two):
        result = await session.receive()
        assert result == {
            "type": "job_result",
            "job_id": first["job_id"],
            "request_id": "r-1",
            "ok": True,
            "result": {"text": "shared"},
        }
    assert await one.nothing(0.1)
    assert await two.nothing(0.05)


async def test_another_tenants_same_request_id_is_another_job() -> None:
    _, node = await online_node("gpu")
    _, acme = await online_session(await new_api_key("acme"))
    _, globex = await online_session(await new_api_key("globex"))
    first = await submitted(acme, "r-1")
    second = await submitted(globex, "r-1")
    assert second["type"] == "job_accepted"
    assert second["job_id"] != first["job_id"]
    assigned = {(await node.receive())["job_id"], (await node.receive())["job_id"]}
    assert assigned == {first["job_id"], second["job_id"]}


async def test_a_repeat_after_the_job_finished_gets_the_same_job_and_its_result_once() -> None:
    _, node = await online_node("gpu")
    _, first_session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(first_session, node, "r-1")
    await finish(node, assign, text="done")
    assert (await first_session.receive())["type"] == "job_result"
    # The session that has the result: the same job, no second result.
    again = await submitted(first_session, "r-1")
    assert (again["type"], again["job_id"]) == ("job_accepted", assign["job_id"])
    assert await first_session.nothing(0.2)
    # Another session of the tenant: the same job, and the result at once.
    _, late = await online_session(await new_api_key("acme"))
    joined = await submitted(late, "r-1")
    assert (joined["type"], joined["job_id"]) == ("job_accepted", assign["job_id"])
    result = await late.receive()
    assert (result["type"], result["job_id"], result["result"]) == (
        "job_result",
        assign["job_id"],
        {"text": "done"},
    )
    assert await late.nothing(0.2)
    assert await node.nothing(0.05)


# --- job_cancel -----------------------------------------------------------------------------------


async def test_cancelling_an_own_job_tells_the_node_and_ends_it_cancelled() -> None:
    _, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_started"))
    await session.send({"type": "job_cancel", "job_id": assign["job_id"]})
    assert await node.receive() == {
        "type": "job_cancel",
        "job_id": assign["job_id"],
        "attempt": 1,
        "reason": "CANCELLED",
    }
    result = await session.receive()
    assert result["type"] == "job_result"
    assert (result["job_id"], result["request_id"], result["ok"]) == (
        assign["job_id"],
        "r-1",
        False,
    )
    assert result["error"]["code"] == "CANCELLED"
    job = await hjobs.job_get(job_id=assign["job_id"])
    assert job is not None and job.state is JobState.CANCELLED
    # The slot is free at once; a result the node sends anyway changes nothing.
    next_assign = await accepted_job(session, node, "r-2")
    assert next_assign["job_id"] != assign["job_id"]
    await node.send(reply(assign, "job_result", ok=True))
    assert await node.settle() == []
    assert await session.nothing(0.1)


async def test_cancelling_a_job_not_yet_acked_ends_it_too() -> None:
    _, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await session.send({"type": "job_cancel", "job_id": assign["job_id"]})
    assert (await node.receive())["reason"] == "CANCELLED"
    assert (await session.receive())["error"]["code"] == "CANCELLED"


async def test_cancelling_an_unknown_foreign_or_finished_job_gets_job_not_found() -> None:
    _, node = await online_node("gpu")
    _, acme = await online_session(await new_api_key("acme"))
    _, globex = await online_session(await new_api_key("globex"))
    foreign = await accepted_job(globex, node, "g-1")
    finished = await accepted_job(acme, node, "a-1")
    await finish(node, finished)
    assert (await acme.receive())["type"] == "job_result"
    for job_id in ("j_unknown", foreign["job_id"], finished["job_id"]):
        await acme.send({"type": "job_cancel", "job_id": job_id})
        error = await acme.receive()
        assert (error["type"], error["code"]) == ("error", "JOB_NOT_FOUND")
        assert error["ref"] == {"type": "job_cancel", "job_id": job_id}
    job = await hjobs.job_get(job_id=foreign["job_id"])
    assert job is not None and job.state is JobState.DISPATCHED
    assert await node.nothing(0.1)
    assert await globex.nothing(0.05)


# --- resume -----------------------------------------------------------------------------------


async def test_a_resumed_session_gets_what_finished_while_it_was_away_after_ready() -> None:
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await session.close()
    await node.send(reply(assign, "job_progress", progress=0.5))
    await node.send(reply(assign, "job_result", ok=True, result={"text": "while away"}))
    assert await node.settle() == []
    back, ready = await session_peer(key, session_id=session_id)
    assert (ready["type"], ready["session_id"]) == ("session_ready", session_id)
    assert await back.receive() == {
        "type": "job_result",
        "job_id": assign["job_id"],
        "request_id": "r-1",
        "ok": True,
        "result": {"text": "while away"},
    }
    assert await back.nothing(0.2)  # the progress sent while away is dropped
    # Delivered once: resuming again brings nothing more.
    await back.close()
    again, ready = await session_peer(key, session_id=session_id)
    assert ready["session_id"] == session_id
    assert await again.nothing(0.2)


async def sent_and_lost(key: str, text: str) -> tuple[str, str]:
    """A session whose job's result was sent but (as far as its client knows) never arrived:
    the socket took it from the outbox and sent it, and the connection died.
    (session_id, job_id)."""
    _, node = await online_node("gpu")
    session_id, session = await online_session(key)
    assign = await accepted_job(session, node, "r-1")
    await finish(node, assign, text=text)
    sent = await session.receive()
    assert (sent["type"], sent["job_id"]) == ("job_result", assign["job_id"])
    await session.close()
    return session_id, assign["job_id"]


async def test_a_resume_awaiting_a_result_sent_on_the_dead_socket_gets_it_again() -> None:
    key = await new_api_key("acme")
    session_id, job_id = await sent_and_lost(key, "lost in transit")
    back, ready = await session_peer(key, session_id=session_id, awaiting=[job_id, "j_never"])
    assert ready["session_id"] == session_id
    assert await back.receive() == {
        "type": "job_result",
        "job_id": job_id,
        "request_id": "r-1",
        "ok": True,
        "result": {"text": "lost in transit"},
    }
    assert await back.nothing(0.2)
    # Once: a resume that no longer names it gets nothing more.
    await back.close()
    again, _ = await session_peer(key, session_id=session_id, awaiting=[])
    assert await again.nothing(0.2)


async def test_a_resume_not_awaiting_a_sent_result_does_not_get_it_again() -> None:
    key = await new_api_key("acme")
    session_id, _ = await sent_and_lost(key, "received")
    back, ready = await session_peer(key, session_id=session_id)
    assert ready["session_id"] == session_id
    assert await back.nothing(0.3)


async def test_a_resent_result_is_rebuilt_from_the_record_or_answered_job_lost(hot) -> None:
    """The copy kept at the take lasts a minute; after it, the job's record gives the result,
    and a job whose record is gone gets JOB_LOST."""
    key = await new_api_key("acme")
    session_id, job_id = await sent_and_lost(key, "from the record")
    await hot.delete(hkeys.session_handed(session_id))
    back, _ = await session_peer(key, session_id=session_id, awaiting=[job_id])
    result = await back.receive()
    assert (result["job_id"], result["result"]) == (job_id, {"text": "from the record"})
    await back.close()
    await hot.delete(hkeys.session_handed(session_id))
    await hot.delete(hkeys.job_record(job_id))
    back, _ = await session_peer(key, session_id=session_id, awaiting=[job_id])
    lost = await back.receive()
    assert (lost["job_id"], lost["ok"], lost["error"]["code"]) == (job_id, False, "JOB_LOST")


async def test_a_resume_cannot_fetch_another_sessions_results() -> None:
    key = await new_api_key("acme")
    _, job_id = await sent_and_lost(key, "not yours")
    other_id, other = await online_session(key)
    await other.close()
    back, ready = await session_peer(key, session_id=other_id, awaiting=[job_id])
    assert ready["session_id"] == other_id
    assert await back.nothing(0.3)


async def test_awaiting_on_a_new_session_sends_nothing() -> None:
    """``awaiting`` only means something on a resume: a new session has nothing taken."""
    key = await new_api_key("acme")
    _, job_id = await sent_and_lost(key, "not a resume")
    peer, ready = await session_peer(key, awaiting=[job_id])
    assert ready["type"] == "session_ready"
    assert await peer.nothing(0.3)


async def test_a_session_init_awaiting_an_empty_job_id_is_refused() -> None:
    peer, refused = await session_peer(await new_api_key("acme"), awaiting=[""])
    assert (refused["type"], refused["code"]) == ("error", "UNAUTHORIZED"), refused
    assert await peer.closed_with() == 4401


async def test_a_session_init_awaiting_too_many_jobs_is_refused() -> None:
    peer, refused = await session_peer(
        await new_api_key("acme"), awaiting=[f"j_{n}" for n in range(MAX_AWAITING + 1)]
    )
    assert (refused["type"], refused["code"]) == ("error", "UNAUTHORIZED"), refused
    assert "session_init" in refused["message"]
    assert await peer.closed_with() == 4401


async def test_a_session_id_of_another_tenant_starts_a_new_session() -> None:
    _, node = await online_node("gpu")
    foreign_id, foreign = await online_session(await new_api_key("globex"))
    assign = await accepted_job(foreign, node, "g-1")
    await foreign.close()
    await finish(node, assign, secret="globex's")
    assert await node.settle() == []
    peer, ready = await session_peer(await new_api_key("acme"), session_id=foreign_id)
    assert ready["type"] == "session_ready"
    assert ready["session_id"] != foreign_id
    assert await peer.nothing(0.2)


async def test_an_unknown_session_id_starts_a_new_session() -> None:
    _, ready = await session_peer(await new_api_key("acme"), session_id="s_never_was")
    assert ready["type"] == "session_ready"
    assert ready["session_id"] != "s_never_was"


async def test_an_expired_session_id_starts_a_new_session(settings) -> None:
    settings.SESSION_RESUME_TTL = 0.3
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    await session.close()
    await asyncio.sleep(0.5)
    _, ready = await session_peer(key, session_id=session_id)
    assert ready["type"] == "session_ready"
    assert ready["session_id"] != session_id


async def test_a_session_connected_longer_than_the_resume_ttl_still_gets_its_results(
    settings,
) -> None:
    settings.SESSION_RESUME_TTL = 1.0
    _, node = await online_node("gpu")
    key = await new_api_key("acme")
    session_id, session = await online_session(key)
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await asyncio.sleep(1.5)
    await node.send(reply(assign, "job_result", ok=True, result={"text": "late"}))
    result = await session.receive()
    assert (result["type"], result["result"]) == ("job_result", {"text": "late"})
    # And it can still be resumed after it disconnects.
    await session.close()
    _, ready = await session_peer(key, session_id=session_id)
    assert ready["session_id"] == session_id
