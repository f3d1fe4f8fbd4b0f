"""The node socket, as a worker machine sees it (PROTOCOL.md, Node ⇄ scheduler)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotstate import directory as hdirectory
from hotstate import jobs as hjobs
from hotstate.jobs import JobState
from nodes.snapshot import snapshot_get
from tests.support.inprocess import (
    Peer,
    accepted_job,
    beating,
    eventually,
    heartbeat,
    job_state,
    new_api_key,
    new_node,
    node_peer,
    online_node,
    online_session,
    reply,
    session_peer,
    submit,
    submitted,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


async def marks_of(node_id: str) -> dict[str, int]:
    for view in await hdirectory.node_directory_read():
        if view.node_id == node_id:
            return dict(view.unavailable)
    return {}


async def _in_snapshot(node_id: str) -> bool:
    await snapshot_get().refresh()
    return node_id in snapshot_get().nodes


# --- registration -------------------------------------------------------------------------------


async def test_a_node_registers_and_gets_its_stable_node_id(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 4000
    node_id, token = await new_node("gpu-a")
    peer, registered = await node_peer(token)
    assert registered == {
        "type": "node_registered",
        "node_id": node_id,
        "heartbeat_interval_ms": 4000,
        "instance_id": registered["instance_id"],
    }
    assert registered["instance_id"].startswith("i_")
    await peer.close()
    _, registered = await node_peer(token)
    assert registered["node_id"] == node_id


async def test_a_job_runs_end_to_end_through_both_sockets() -> None:
    node_id, token = await new_node("gpu-e2e")
    node, _ = await node_peer(token)
    session, ready = await session_peer(await new_api_key("acme"))
    assert ready["type"] == "session_ready"
    await session.send(submit("r-1"))
    accepted = await session.receive()
    assert accepted == {
        "type": "job_accepted",
        "request_id": "r-1",
        "job_id": accepted["job_id"],
        "node_id": node_id,
    }
    assign = await node.receive()
    assert assign == {
        "type": "job_assign",
        "job_id": accepted["job_id"],
        "attempt": 1,
        "service": {"id": "asr"},
        "features": [],
        "payload": {"audio": "..."},
        "deadline_ms": assign["deadline_ms"],
    }
    job = {"job_id": assign["job_id"], "attempt": 1}
    await node.send({"type": "job_ack", **job})
    await node.send({"type": "job_started", **job})
    await node.send({"type": "job_progress", **job, "progress": 0.5})
    progress = await session.receive()
    assert progress == {
        "type": "job_progress",
        "job_id": job["job_id"],
        "request_id": "r-1",
        "progress": 0.5,
    }
    await node.send({"type": "job_result", **job, "ok": True, "result": {"text": "hi"}})
    result = await session.receive()
    assert result == {
        "type": "job_result",
        "job_id": job["job_id"],
        "request_id": "r-1",
        "ok": True,
        "result": {"text": "hi"},
    }
    # Repeating the result is harmless: no error to the node, no second result to the session.
    await node.send({"type": "job_result", **job, "ok": True, "result": {"text": "hi"}})
    assert await node.settle() == []
    assert await session.nothing()


async def test_a_bad_token_gets_unauthorized_and_4401() -> None:
    peer, error = await node_peer("nt_wrong")
    assert error["type"] == "error" and error["code"] == "UNAUTHORIZED"
    assert await peer.closed_with() == 4401


# --- the job's life cycle through the node's reports ---------------------------------------------


async def test_ack_started_progress_and_result_drive_the_job_and_reach_the_session() -> None:
    node_id, node = await online_node("fsm")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    job_id = assign["job_id"]
    assert (await job_state(job_id))[0] is JobState.DISPATCHED
    await node.send(reply(assign, "job_ack"))
    assert await node.settle() == []
    assert (await job_state(job_id))[0] is JobState.ACCEPTED
    await node.send(reply(assign, "job_started"))
    assert await node.settle() == []
    assert (await job_state(job_id))[0] is JobState.RUNNING
    await node.send(reply(assign, "job_progress", progress=0.25, data={"partial": "he"}))
    assert await session.receive() == {
        "type": "job_progress",
        "job_id": job_id,
        "request_id": "r-1",
        "progress": 0.25,
        "data": {"partial": "he"},
    }
    await node.send(reply(assign, "job_result", ok=True, result={"text": "hello"}))
    assert (await session.receive())["result"] == {"text": "hello"}
    assert await job_state(job_id) == (JobState.FINISHED, 1, node_id)
    assert await node.settle() == []


async def test_a_result_straight_after_the_ack_finishes_the_job() -> None:
    _, node = await online_node("no-started")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True))
    result = await session.receive()
    assert (result["type"], result["ok"], result["result"]) == ("job_result", True, {})
    assert (await job_state(assign["job_id"]))[0] is JobState.FINISHED


async def test_a_failed_result_gives_the_session_the_nodes_error_code() -> None:
    _, node = await online_node("fails")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_started"))
    error = {"code": "CUDA_OOM", "message": "out of memory"}
    await node.send(reply(assign, "job_result", ok=False, error=error))
    assert await session.receive() == {
        "type": "job_result",
        "job_id": assign["job_id"],
        "request_id": "r-1",
        "ok": False,
        "error": error,
    }
    assert (await job_state(assign["job_id"]))[0] is JobState.FAILED
    await node.send(reply(assign, "job_result", ok=False, error=error))
    assert await node.settle() == []
    assert await session.nothing()


async def test_a_late_ack_after_the_result_is_ignored_without_an_error() -> None:
    _, node = await online_node("late-ack")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True))
    await session.receive_type("job_result")
    await node.send(reply(assign, "job_started"))
    await node.send(reply(assign, "job_ack"))
    assert await node.settle() == []
    assert (await job_state(assign["job_id"]))[0] is JobState.FINISHED
    assert await session.nothing()


# --- replies that change nothing ----------------------------------------------------------------

REPORTS = {
    "job_ack": {},
    "job_started": {},
    "job_progress": {"progress": 0.5},
    "job_result": {"ok": True, "result": {"text": "wrong"}},
    "model_not_available": {"service": {"id": "asr"}, "reason": "unloaded"},
}
each_report = pytest.mark.parametrize("frame_type", list(REPORTS))


async def handled_by_workers(frame_type: str) -> None:
    """model_not_available is handled by a worker duty, not by the socket: give it the time
    to act on a report it should never have received."""
    if frame_type == "model_not_available":
        await asyncio.sleep(0.25)


async def job_at_attempt_2(settings) -> tuple[Peer, Peer, dict[str, Any]]:
    """A job whose first attempt was never acked, placed again on the same (only) node."""
    settings.ACK_TIMEOUT = 0.3
    _, node = await online_node("slow-acker")
    _, session = await online_session(await new_api_key("acme"))
    first = await accepted_job(session, node, "r-1")
    cancel = await node.receive(timeout=3)
    assert cancel == {
        "type": "job_cancel",
        "job_id": first["job_id"],
        "attempt": 1,
        "reason": "NODE_LOST",
    }
    second = await node.receive(timeout=3)
    assert (second["type"], second["job_id"], second["attempt"]) == (
        "job_assign",
        first["job_id"],
        2,
    )
    settings.ACK_TIMEOUT = 60  # no further failover while the test looks
    return node, session, second


@each_report
@pytest.mark.parametrize("offset", [-1, +1], ids=["lower", "higher"])
async def test_a_reply_with_another_attempt_gets_stale_attempt_and_changes_nothing(
    frame_type: str, offset: int, settings
) -> None:
    node, session, assign = await job_at_attempt_2(settings)
    before = await job_state(assign["job_id"])
    await node.send({**reply(assign, frame_type, **REPORTS[frame_type]), "attempt": 2 + offset})
    error = await node.receive()
    assert error["type"] == "error"
    assert error["code"] == "STALE_ATTEMPT"
    assert error["ref"] == {"type": frame_type, "job_id": assign["job_id"]}
    await handled_by_workers(frame_type)
    assert await job_state(assign["job_id"]) == before
    assert await session.nothing(0.1)
    # The current attempt still works.
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True, result={"text": "right"}))
    assert (await session.receive())["result"] == {"text": "right"}


@each_report
async def test_a_reply_about_another_nodes_job_gets_forbidden_and_changes_nothing(
    frame_type: str,
) -> None:
    _, owner = await online_node("owner")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, owner, "r-1")
    other_id, other = await online_node("other")
    before = await job_state(assign["job_id"])
    await other.send(reply(assign, frame_type, **REPORTS[frame_type]))
    error = await other.receive()
    assert (error["type"], error["code"]) == ("error", "FORBIDDEN")
    assert error["ref"] == {"type": frame_type, "job_id": assign["job_id"]}
    await handled_by_workers(frame_type)
    assert await job_state(assign["job_id"]) == before
    assert await marks_of(other_id) == {}
    assert await session.nothing(0.1)
    assert await owner.nothing(0.05)


@each_report
async def test_a_reply_about_an_unknown_job_gets_job_not_found(frame_type: str) -> None:
    _, node = await online_node("lost")
    await node.send({"type": frame_type, "job_id": "j_nope", "attempt": 1, **REPORTS[frame_type]})
    error = await node.receive()
    assert (error["type"], error["code"]) == ("error", "JOB_NOT_FOUND")
    assert error["ref"] == {"type": frame_type, "job_id": "j_nope"}
    assert await node.settle() == []


# --- heartbeats -----------------------------------------------------------------------------------


async def test_heartbeats_keep_a_node_online_beyond_three_intervals(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 100
    node_id, node = await online_node("beats")
    async with beating(node, interval=0.08):
        await asyncio.sleep(0.6)
    _, session = await online_session(await new_api_key("acme"))
    accepted = await submitted(session, "r-1")
    assert (accepted["type"], accepted["node_id"]) == ("job_accepted", node_id)


async def test_a_silent_node_is_offline_after_three_intervals(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 100
    await online_node("silent")
    await asyncio.sleep(0.5)
    _, session = await online_session(await new_api_key("acme"))
    rejected = await submitted(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "NO_AVAILABLE_NODE")


async def test_a_heartbeat_brings_an_expired_node_back(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 100
    node_id, node = await online_node("back")
    await asyncio.sleep(0.5)
    await node.send(heartbeat())
    assert await node.settle() == []
    _, session = await online_session(await new_api_key("acme"))
    async with beating(node, interval=0.08):
        accepted = await submitted(session, "r-1")
    assert (accepted["type"], accepted["node_id"]) == ("job_accepted", node_id)


async def test_a_new_service_in_a_heartbeat_is_schedulable_at_once() -> None:
    node_id, node = await online_node("learns-tts")
    _, session = await online_session(await new_api_key("acme"))
    await node.send(heartbeat(services=[{"id": "asr"}, {"id": "tts", "version": "2"}]))
    assert await node.settle() == []
    await session.send({**submit("r-1"), "service": {"id": "tts", "version": "2"}})
    accepted = await session.receive()
    assert (accepted["type"], accepted["node_id"]) == ("job_accepted", node_id)
    assign = await node.receive()
    assert assign["service"] == {"id": "tts", "version": "2"}


async def test_a_service_dropped_in_a_heartbeat_gets_no_more_jobs() -> None:
    _, node = await online_node("drops-asr", services=[{"id": "asr"}, {"id": "nmt"}])
    _, session = await online_session(await new_api_key("acme"))
    await node.send(heartbeat(services=[{"id": "nmt"}]))
    assert await node.settle() == []
    rejected = await submitted(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "NO_AVAILABLE_NODE")
    assert (await submitted(session, "r-2", service="nmt"))["type"] == "job_accepted"


async def test_a_higher_max_jobs_in_a_heartbeat_takes_effect() -> None:
    _, node = await online_node("grows", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assert (await submitted(session, "r-1"))["type"] == "job_accepted"
    assert (await submitted(session, "r-2"))["code"] == "NO_AVAILABLE_NODE"
    await node.send(heartbeat(max_jobs=2))
    await node.settle()
    assert (await submitted(session, "r-3"))["type"] == "job_accepted"


async def test_a_capability_heartbeat_that_fails_validation_changes_nothing() -> None:
    node_id, node = await online_node("bad-caps")
    await node.send(heartbeat(services=[{"id": "a,b"}]))
    error = await node.receive()
    assert (error["code"], error["ref"]) == ("BAD_MESSAGE", {"type": "node_heartbeat"})
    _, session = await online_session(await new_api_key("acme"))
    assert (await submitted(session, "r-1"))["node_id"] == node_id


# --- drain and model_not_available ----------------------------------------------------------------


async def test_a_drained_node_gets_no_new_jobs_but_finishes_its_running_ones() -> None:
    _, node = await online_node("drains")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send({"type": "node_drain"})
    assert await node.settle() == []
    rejected = await submitted(session, "r-2")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "NO_AVAILABLE_NODE")
    other_id, _ = await online_node("takes-over")
    for request_id in ("r-3", "r-4"):
        assert (await submitted(session, request_id))["node_id"] == other_id
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True))
    result = await session.receive_type("job_result")
    assert (result["job_id"], result["ok"]) == (assign["job_id"], True)
    assert await node.nothing(0.05)


async def test_a_drained_node_stays_drained_when_it_comes_back_after_a_silence(settings) -> None:
    settings.HEARTBEAT_INTERVAL_MS = 100
    node_id, node = await online_node("drained-silent")
    await node.send({"type": "node_drain"})
    assert await node.settle() == []
    await asyncio.sleep(0.5)  # presence expires
    _, session = await online_session(await new_api_key("acme"))
    async with beating(node, interval=0.08):
        # Back online, as this instance's next refresh reads it from Redis.
        await eventually(lambda: _in_snapshot(node_id), timeout=3)
        rejected = await submitted(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "NO_AVAILABLE_NODE")


async def test_model_not_available_without_a_job_marks_the_node_for_that_service_only() -> None:
    marked_id, marked = await online_node("no-asr", services=[{"id": "asr"}, {"id": "nmt"}])
    await marked.send(
        {"type": "model_not_available", "service": {"id": "asr"}, "reason": "evicted"}
    )
    assert await marked.settle() == []

    async def is_marked() -> bool:
        return "asr" in await marks_of(marked_id)

    await eventually(is_marked)
    other_id, _ = await online_node("has-asr")
    _, session = await online_session(await new_api_key("acme"))
    # Least-loaded ranking would send the second job to the marked node if it were a candidate.
    for request_id in ("r-1", "r-2"):
        assert (await submitted(session, request_id))["node_id"] == other_id
    assert (await submitted(session, "r-3"))["code"] == "NO_AVAILABLE_NODE"
    assert (await submitted(session, "r-4", service="nmt"))["node_id"] == marked_id


async def test_model_not_available_with_a_job_moves_it_to_another_node_unseen(settings) -> None:
    first_id, first = await online_node("first")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, first, "r-1")
    second_id, second = await online_node("second")
    await first.send(
        {
            "type": "model_not_available",
            **reply(assign, "model_not_available"),
            "service": {"id": "asr"},
            "reason": "weights missing",
        }
    )
    moved = await second.receive(timeout=3)
    assert moved["type"] == "job_assign"
    assert (moved["job_id"], moved["attempt"]) == (assign["job_id"], 2)
    assert moved["payload"] == assign["payload"]
    assert await job_state(assign["job_id"]) == (JobState.DISPATCHED, 2, second_id)
    # The first node is told to drop its attempt, and gets nothing more.
    assert await first.receive() == {
        "type": "job_cancel",
        "job_id": assign["job_id"],
        "attempt": 1,
        "reason": "NODE_LOST",
    }
    assert await first.nothing(0.05)
    assert await session.nothing(0.1)
    await second.send(reply(moved, "job_ack"))
    await second.send(reply(moved, "job_result", ok=True, result={"by": "second"}))
    result = await session.receive()
    assert (result["type"], result["result"]) == ("job_result", {"by": "second"})
    assert await session.nothing(0.1)
    assert "asr" in await marks_of(first_id)


async def test_model_not_available_needs_an_attempt_with_a_job_id() -> None:
    _, node = await online_node("no-attempt")
    await node.send(
        {"type": "model_not_available", "job_id": "j_1", "service": {"id": "asr"}, "reason": "x"}
    )
    error = await node.receive()
    assert error["code"] == "BAD_MESSAGE"
    assert "attempt" in error["message"]
    assert error["ref"] == {"type": "model_not_available", "job_id": "j_1"}


async def test_a_node_registered_while_the_snapshot_refreshes_is_schedulable_at_once(
    monkeypatch,
) -> None:
    """The refresh read began before the node registered and ends after it: the registration
    must survive the refresh (PROTOCOL.md: schedulable from this instance from now on)."""
    from nodes import snapshot

    real_read = hdirectory.node_directory_read
    read_done, release = asyncio.Event(), asyncio.Event()

    async def read_then_wait(**kwargs: Any) -> list[hdirectory.NodeView]:
        views = await real_read(**kwargs)
        if asyncio.current_task() is refresh:  # not the refresh duty's own rounds
            read_done.set()
            await release.wait()
        return views

    monkeypatch.setattr(snapshot.hdirectory, "node_directory_read", read_then_wait)
    refresh = asyncio.ensure_future(snapshot.snapshot_get().refresh())
    await asyncio.wait_for(read_done.wait(), 3)
    node_id, _ = await online_node("mid-refresh")
    release.set()
    await refresh
    _, session = await online_session(await new_api_key("acme"))
    accepted = await submitted(session, "r-1")
    assert (accepted["type"], accepted["node_id"]) == ("job_accepted", node_id)


async def test_progress_after_the_result_is_not_relayed() -> None:
    _, node = await online_node("chatty")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True))
    assert (await session.receive())["type"] == "job_result"
    await node.send(reply(assign, "job_progress", progress=0.9))
    assert await node.settle() == []
    assert await session.nothing(0.2)


async def test_a_result_before_the_ack_counts_as_an_implicit_ack() -> None:
    _, token = await new_node("gpu-noack")
    node, _ = await node_peer(token)
    session, _ = await session_peer(await new_api_key("acme"))
    await session.send(submit("r-noack"))
    accepted = await session.receive()
    assign = await node.receive()
    await node.send(
        {
            "type": "job_result",
            "job_id": assign["job_id"],
            "attempt": 1,
            "ok": True,
            "result": {"fast": True},
        }
    )
    result = await session.receive()
    assert result["job_id"] == accepted["job_id"]
    assert result["ok"] is True and result["result"] == {"fast": True}
    job = await hjobs.job_get(job_id=assign["job_id"])
    assert job is not None and job.state is JobState.FINISHED
    await node.close()
    await session.close()
