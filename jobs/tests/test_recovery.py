"""Recovery of the job life cycle (DESIGN.md, "Durability and recovery").

Each test forces one interleaving that lost a job before the follow-ups were recorded on the
job itself: a Redis error right after the final transition, a crash between a job's creation
and its dispatch, and a cancel racing a dispatch. The sweep (the timer duty of this test's own
scheduler) must finish what was left, so the session gets its result and no slot stays held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.runtime import now_ms
from core.state import STATE
from hotstate import jobs as hjobs
from hotstate import keys
from hotstate import nodes as hnodes
from hotstate import slots as hslots
from hotstate.client import get_client
from hotstate.errors import DependencyDown
from hotstate.jobs import JobState
from jobs import services as jobs
from jobs.services import endings, submit
from jobs.services.reports import MnaEdge
from nodes.services import Told
from protocol import ErrorCode, JobSubmit, ServiceRef
from sessions import consumers as session_consumers
from sessions import delivery
from tests.support.inprocess import (
    accepted_job,
    eventually,
    job_state,
    new_api_key,
    new_node,
    node_peer,
    online_node,
    online_session,
    reply,
)
from tests.support.inprocess import submit as submit_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


def job_submit(request_id: str) -> JobSubmit:
    return JobSubmit(request_id=request_id, service=ServiceRef(id="asr"), payload={"a": 1})


def fail_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Make ``module.name`` raise DependencyDown on its first call, as a Redis error would."""
    original = getattr(module, name)
    calls: list[str] = []

    async def failing(**kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise DependencyDown(f"{name}: injected")
        return await original(**kwargs)

    monkeypatch.setattr(module, name, failing)
    return calls


async def slot_free(node_id: str, job_id: str) -> bool:
    client = get_client()
    return await client.zscore(keys.node_reservations(node_id), job_id) is None


async def nothing_owed(job_id: str) -> bool:
    job = await hjobs.job_get(job_id=job_id)
    return job is not None and not job.owed


async def test_a_result_whose_delivery_fails_after_the_final_transition_still_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node_id, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    calls = fail_once(monkeypatch, endings, "result_deliver_to")
    await node.send(reply(assign, "job_result", ok=True, result={"text": "hi"}))
    result = await session.receive_type("job_result", timeout=10)
    assert (result["job_id"], result["ok"], result["result"]) == (
        assign["job_id"],
        True,
        {"text": "hi"},
    )
    assert len(calls) == 2, "the sweep redid the delivery"
    await eventually(lambda: nothing_owed(assign["job_id"]), timeout=5)
    assert await slot_free(node_id, assign["job_id"])
    # A repeat of the node's report changes nothing and the session gets no second result.
    await node.send(reply(assign, "job_result", ok=True, result={"text": "hi"}))
    assert await session.nothing(0.3)


async def test_a_slot_release_that_fails_after_a_result_is_redone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node_id, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    fail_once(monkeypatch, hslots, "slot_release")
    await node.send(reply(assign, "job_result", ok=True))
    assert (await session.receive_type("job_result"))["ok"] is True
    await eventually(lambda: slot_free(node_id, assign["job_id"]), timeout=10)
    await eventually(lambda: nothing_owed(assign["job_id"]), timeout=5)


async def test_a_cancel_whose_follow_ups_fail_still_reaches_the_session_and_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, node = await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    fail_once(monkeypatch, endings, "result_deliver_to")
    ended = await jobs.job_cancel(tenant="acme", job_id=assign["job_id"])
    assert ended.state is JobState.CANCELLED
    cancel = await node.receive_type("job_cancel")
    assert (cancel["job_id"], cancel["reason"]) == (assign["job_id"], "CANCELLED")
    result = await session.receive_type("job_result", timeout=10)
    assert result["error"]["code"] == "CANCELLED"


async def test_a_job_whose_submitter_crashed_between_create_and_dispatch_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Its session never heard job_accepted, so the job must neither hang (a retry would join
    a job that never ends) nor run (its session would get a result it never asked for)."""
    settings.ACK_TIMEOUT = 0.5
    settings.REDIS_SOCKET_TIMEOUT = 0.5
    _, node = await online_node("gpu")

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(submit, "_dispatch_first", crash)
    with pytest.raises(RuntimeError):
        await jobs.job_submit(tenant="acme", session_id="", submit=job_submit("r-1"))
    monkeypatch.undo()
    claim = await hjobs.request_claim(
        tenant="acme", request_id="r-1", job_id="j_probe", lease_ms=1000
    )
    crashed = claim.job_id

    async def rejected() -> bool:
        job = await hjobs.job_get(job_id=crashed)
        return job is not None and job.state is JobState.FAILED

    await eventually(rejected, timeout=10)
    job = await hjobs.job_get(job_id=crashed)
    assert job is not None
    assert (job.error_code, job.node_id, job.owed) == ("NO_AVAILABLE_NODE", None, {})
    # The request id is free again: a retry makes a new job, which runs.
    retry = await jobs.job_submit(tenant="acme", session_id="", submit=job_submit("r-1"))
    assert retry.job_id != crashed and not retry.duplicate
    assert (await node.receive_type("job_assign"))["job_id"] == retry.job_id


async def test_a_cancel_racing_a_dispatch_stops_the_node_the_job_landed_on() -> None:
    node_id, node = await online_node("gpu", max_jobs=1)
    await hjobs.job_create(
        job_id="j_race", tenant="acme", request_id="r-1", session_id="", service_id="asr",
        service_version=None, features=(), payload_json="{}", timeout_ms=60_000,
    )  # fmt: skip
    # The cancel reads the job while it waits for a node...
    stale = await hjobs.job_get(job_id="j_race")
    assert stale is not None and stale.node_id is None
    # ... a dispatch places it meanwhile ...
    assert await jobs.job_dispatch(job=stale, exclude=()) == node_id
    assert (await node.receive_type("job_assign"))["job_id"] == "j_race"
    # ... and the cancel applies to the job as it is now: on that node.
    ended = await jobs.job_end(
        job=stale, to=JobState.CANCELLED, code=ErrorCode.CANCELLED, message="test"
    )
    assert ended is not None and ended.state is JobState.CANCELLED
    cancel = await node.receive_type("job_cancel")
    assert (cancel["job_id"], cancel["reason"]) == ("j_race", "CANCELLED")
    # The node's socket frees the slot right after it sent the frame.
    await eventually(lambda: slot_free(node_id, "j_race"))


async def test_a_timer_fired_before_anything_was_created_is_disarmed() -> None:
    from hotstate import timers as htimers

    await htimers.timer_arm(job_id="j_never", due_ms=now_ms())
    await jobs.job_check(job_id="j_never")
    assert "j_never" not in await htimers.timers_claim(now_ms=now_ms() + 60_000, limit=1000)


async def test_a_submit_stalled_on_redis_holds_up_neither_other_submits_nor_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A primary that stalls its writes for seconds (CLIENT PAUSE WRITE) stalls the submits that
    touch it; the session's other submits, and results for its earlier jobs, go on."""
    _, node = await online_node("gpu", max_jobs=4)
    _, session = await online_session(await new_api_key("acme"))
    earlier = await accepted_job(session, node, "r-earlier")
    stall = asyncio.Event()
    original = jobs.job_submit

    async def stalled(**kwargs: Any) -> Any:
        if kwargs["submit"].request_id == "r-stalled":
            await stall.wait()
        return await original(**kwargs)

    monkeypatch.setattr(jobs, "job_submit", stalled)
    await session.send(submit_frame("r-stalled"))
    await session.send(submit_frame("r-next"))
    accepted = await session.receive_type("job_accepted")
    assert accepted["request_id"] == "r-next"
    await node.send(reply(earlier, "job_result", ok=True))
    assert (await session.receive_type("job_result"))["job_id"] == earlier["job_id"]
    stall.set()
    assert (await session.receive_type("job_accepted"))["request_id"] == "r-stalled"


async def test_a_result_stalled_on_its_way_out_holds_up_no_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other way round: a take from the outbox that a frozen Redis holds for seconds. The
    consumer handled its events one at a time with its frames, so a session's submits went
    unanswered for over 10 s behind a few stalled takes (the chaos test's frozen cluster)."""
    _, node = await online_node("gpu", max_jobs=4)
    session_id, session = await online_session(await new_api_key("acme"))
    earlier = await accepted_job(session, node, "r-earlier")
    stall = asyncio.Event()
    original = session_consumers.outbox_take

    async def stalled(**kwargs: Any) -> Any:
        await stall.wait()
        return await original(**kwargs)

    monkeypatch.setattr(session_consumers, "outbox_take", stalled)
    await node.send(reply(earlier, "job_result", ok=True))
    await eventually(lambda: in_outbox(session_id, earlier["job_id"]))
    accepted = await submitted_now(session, "r-next")
    assert accepted["type"] == "job_accepted"
    stall.set()
    assert (await session.receive_type("job_result"))["job_id"] == earlier["job_id"]


async def in_outbox(session_id: str, job_id: str) -> bool:
    return bool(await get_client().hexists(keys.session_outbox(session_id), job_id))


async def submitted_now(session: Any, request_id: str) -> dict[str, Any]:
    await session.send(submit_frame(request_id))
    return await session.receive_type("job_accepted", timeout=2)


async def test_a_storm_of_reports_about_a_service_reaches_the_stream_once_per_window() -> None:
    """DESIGN.md's acceptance test, its server side: a node repeating model_not_available
    about one service costs the stream one entry per window; a report naming a job always
    goes."""
    node_id, node = await online_node("stormy", max_jobs=1)
    stream = keys.mna_stream(keys.mna_stream_shard(node_id))
    frame = {"type": "model_not_available", "service": {"id": "asr"}, "reason": "evicted"}
    for _ in range(20):
        await node.send(frame)
    other = {**frame, "service": {"id": "asr", "version": "v2"}}
    await node.send(other)
    await node.send({"type": "ping"})
    await node.receive_type("pong")
    entries = await get_client().xrange(stream)
    reported = sorted(
        (fields["service_id"], fields.get("service_version", ""))
        for _, fields in entries
        if fields["node_id"] == node_id
    )
    assert reported == [("asr", ""), ("asr", "v2")]
    assert STATE.part(MnaEdge).skipped == 19


async def test_a_node_that_could_not_be_told_to_stop_keeps_its_slot_until_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Released first, the slot could be filled while the node still runs the job it was not
    told about: one job too many on the node (seen under CLIENT PAUSE: the notice's channel
    stalled)."""
    node_id, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    original = endings.node_job_cancel
    told: list[bool] = []

    async def unreachable_once(**kwargs: Any) -> Told:
        if not told:
            told.append(False)
            return Told.UNREACHABLE
        told.append(True)
        return await original(**kwargs)

    monkeypatch.setattr(endings, "node_job_cancel", unreachable_once)
    await jobs.job_cancel(tenant="acme", job_id=assign["job_id"])
    assert (await session.receive_type("job_result"))["error"]["code"] == "CANCELLED"
    assert not await slot_free(node_id, assign["job_id"]), "released before the node was told"
    cancel = await node.receive_type("job_cancel", timeout=10)
    assert cancel["job_id"] == assign["job_id"]
    await eventually(lambda: slot_free(node_id, assign["job_id"]), timeout=5)
    assert told == [False, True]


async def test_a_request_whose_first_submit_died_after_its_claim_is_placed_by_a_repeat() -> None:
    """The claim bound the request to a job id, then the submitter died before creating it: a
    repeat must not be told 'still being placed' until the binding's lease ends (minutes)."""
    _, node = await online_node("gpu")
    lease_ms = hjobs.request_lease_ms(60_000)
    claim = await hjobs.request_claim(
        tenant="acme", request_id="r-1", job_id="j_orphan", lease_ms=lease_ms
    )
    assert claim.won
    repeat = await jobs.job_submit(tenant="acme", session_id="", submit=job_submit("r-1"))
    assert (repeat.job_id, repeat.duplicate) == ("j_orphan", True)
    assert (await node.receive_type("job_assign"))["job_id"] == "j_orphan"


async def test_a_job_assign_the_channel_layer_could_not_send_is_placed_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layer's Redis timing out on a send (a stalled primary) is 'not sent', not a server
    error: the submit is accepted and the job moves to a node that can be told."""
    a_id, node_a = await online_node("a", max_jobs=1)
    b_id, node_b = await online_node("b", max_jobs=1)
    layer = get_channel_layer()
    original = layer.send
    stalled: list[str] = []

    async def send(channel: str, message: dict[str, Any]) -> None:
        if message["type"] == "job.assign" and not stalled:
            stalled.append(channel)
            raise RedisTimeoutError("Timeout reading from the layer's primary")
        await original(channel, message)

    monkeypatch.setattr(layer, "send", send)
    accepted = await jobs.job_submit(tenant="acme", session_id="", submit=job_submit("r-1"))
    assert stalled, "the first job_assign went through the stalled send"
    # Accepted where it landed: the node the layer could reach, as attempt 2.
    landed, skipped = (node_a, node_b) if accepted.node_id == a_id else (node_b, node_a)
    assert accepted.node_id in (a_id, b_id)
    assert (await landed.receive_type("job_assign"))["job_id"] == accepted.job_id
    # The unreached node is told to drop attempt 1, which it never got (harmless).
    cancel = await skipped.receive_type("job_cancel")
    assert (cancel["job_id"], cancel["attempt"]) == (accepted.job_id, 1)
    assert (await job_state(accepted.job_id))[1] == 2


def dispatch_unanswered(monkeypatch: pytest.MonkeyPatch, *, applied: bool) -> None:
    """Redis fails the first move to DISPATCHED: after running it (``applied``) or before."""
    original = hjobs.job_transition
    failed: list[bool] = []

    async def transition(**kwargs: Any) -> Any:
        if kwargs["to"] is JobState.DISPATCHED and not failed:
            failed.append(True)
            if applied:
                await original(**kwargs)
            raise DependencyDown("job_transition: TimeoutError (injected)")
        return await original(**kwargs)

    monkeypatch.setattr(hjobs, "job_transition", transition)


async def test_a_job_whose_dispatch_may_have_applied_is_accepted_and_runs(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.ACK_TIMEOUT = 0.5
    _, node = await online_node("gpu", max_jobs=2)
    _, session = await online_session(await new_api_key("acme"))
    dispatch_unanswered(monkeypatch, applied=True)
    await session.send(submit_frame("r-1"))
    accepted = await session.receive_type("job_accepted")
    # The node never got attempt 1; its ack timer moves the job to attempt 2.
    assign = await node.receive_type("job_assign", timeout=10)
    assert (assign["job_id"], assign["attempt"]) == (accepted["job_id"], 2)
    await node.send(reply(assign, "job_result", ok=True))
    assert (await session.receive_type("job_result"))["ok"] is True


async def test_a_job_whose_dispatch_did_not_apply_ends_with_a_result_for_its_session(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.ACK_TIMEOUT = 0.5
    settings.REDIS_SOCKET_TIMEOUT = 0.5
    monkeypatch.setattr(delivery, "EXPECT_GRACE_S", 0.5)
    monkeypatch.setattr(delivery, "EXPECT_RECHECK_S", 0.5)
    await online_node("gpu")
    _, session = await online_session(await new_api_key("acme"))
    dispatch_unanswered(monkeypatch, applied=False)
    await session.send(submit_frame("r-1"))
    accepted = await session.receive_type("job_accepted")
    result = await session.receive_type("job_result", timeout=15)
    assert (result["job_id"], result["ok"]) == (accepted["job_id"], False)
    assert result["error"]["code"] == "NO_AVAILABLE_NODE"
    assert await session.nothing(1.5)


async def test_a_cancel_stalled_on_its_way_to_the_node_keeps_the_slot_until_it_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen under CLIENT PAUSE: the cancel was queued (its stream write succeeded) but the node's
    instance could not read it yet, the slot was freed meanwhile, and a new job_assign sent
    straight from the node's own process overtook the cancel: five jobs on a four-slot node."""
    node_id, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    layer = get_channel_layer()
    original = layer.send
    held: list[tuple[str, dict[str, Any]]] = []

    async def send(channel: str, message: dict[str, Any]) -> None:
        if message["type"] == "job.cancel":
            held.append((channel, message))  # queued, not yet read by the node's socket
            return
        await original(channel, message)

    monkeypatch.setattr(layer, "send", send)
    await jobs.job_cancel(tenant="acme", job_id=assign["job_id"])
    assert held, "the cancel went out"
    assert not await slot_free(node_id, assign["job_id"]), "freed before the node was told"
    assert (await submit_and_answer(session, "r-2"))["type"] == "job_rejected"
    monkeypatch.undo()
    for channel, message in held[:1]:
        await layer.send(channel, message)
    assert (await node.receive())["type"] == "job_cancel"
    await eventually(lambda: slot_free(node_id, assign["job_id"]))
    second = await submit_and_answer(session, "r-3")
    assert second["type"] == "job_accepted", second
    assert (await node.receive_type("job_assign"))["job_id"] == second["job_id"]


async def submit_and_answer(session: Any, request_id: str) -> dict[str, Any]:
    await session.send(submit_frame(request_id))
    while True:
        frame: dict[str, Any] = await session.receive()
        if frame.get("request_id") == request_id and frame["type"] != "job_result":
            return frame


async def test_a_node_offline_when_its_job_ended_is_told_and_freed_once_it_is_back() -> None:
    """Its presence lapsed (a stalled Redis held up its heartbeats, or it is reconnecting): it
    may still run the job, so its slot waits for it to be told, not freed under it."""
    node_id, token = await new_node("gpu")
    node, registered = await node_peer(token, max_jobs=1)
    assert registered["type"] == "node_registered"
    _, session = await online_session(await new_api_key("acme"))
    assign = await accepted_job(session, node, "r-1")
    await node.close()
    await eventually(lambda: node_gone(node_id))
    await jobs.job_cancel(tenant="acme", job_id=assign["job_id"])
    assert (await session.receive_type("job_result"))["error"]["code"] == "CANCELLED"
    assert not await slot_free(node_id, assign["job_id"]), "freed while the node may run it"
    back, registered = await node_peer(token, max_jobs=1)
    assert registered["type"] == "node_registered"
    cancel = await back.receive_type("job_cancel", timeout=10)
    assert cancel["job_id"] == assign["job_id"]
    await eventually(lambda: slot_free(node_id, assign["job_id"]))


async def node_gone(node_id: str) -> bool:
    return await hnodes.node_channel(node_id=node_id) is None


async def test_a_job_rejected_while_its_placement_was_unknown_is_withdrawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen with the whole cluster frozen: the move to DISPATCHED and the session's expectation
    both went unanswered, the session was told job_rejected, and Redis then ran the move: the
    job ran and its result reached a session told it was never created."""
    node_id, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    dispatch_unanswered(monkeypatch, applied=True)
    original = submit.outbox_expect

    async def expect_unanswered(**kwargs: Any) -> None:
        raise DependencyDown("session_result_expect: TimeoutError (injected)")

    monkeypatch.setattr(submit, "outbox_expect", expect_unanswered)
    rejected = await submit_and_answer(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "DEPENDENCY_DOWN")
    monkeypatch.setattr(submit, "outbox_expect", original)
    cancel = await node.receive_type("job_cancel", timeout=5)
    job = await hjobs.job_get(job_id=cancel["job_id"])
    assert job is not None and job.state is JobState.FAILED
    await eventually(lambda: slot_free(node_id, cancel["job_id"]))
    assert await session.nothing(0.5), "a result for a rejected submit"
    # The request id is free: a retry is a new job.
    again = await submit_and_answer(session, "r-1")
    assert again["type"] == "job_accepted" and again["job_id"] != cancel["job_id"]


async def test_a_job_placed_after_its_submit_gave_up_is_withdrawn_by_its_first_check(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The whole cluster frozen: the session was told job_rejected, then Redis ran the move to
    DISPATCHED as it woke up, and the job's check (a deadline passed meanwhile, or a missing
    ack) ended it with a result before the submit's own withdrawal came: a result reached a
    session told its submit was rejected (the chaos test's freeze, about half the runs)."""
    settings.ACK_TIMEOUT = 0.5
    node_id, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    dispatch_unanswered(monkeypatch, applied=True)

    async def expect_unanswered(**kwargs: Any) -> None:
        raise DependencyDown("session_result_expect: TimeoutError (injected)")

    monkeypatch.setattr(submit, "outbox_expect", expect_unanswered)
    # The submit's own withdrawal never comes (its process died, or its retries lost the race).
    monkeypatch.setattr(submit, "_withdraw_later", lambda **kwargs: None)
    rejected = await submit_and_answer(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "DEPENDENCY_DOWN")
    [job_id] = await reserved_on(node_id)
    # The move ran late: as a frozen primary runs it when it wakes, after the submit's deadline.
    record = keys.job_record(job_id)
    updated_ms = int(await get_client().hget(record, "updated_ms"))
    late = updated_ms - int(settings.SUBMIT_DEADLINE_S * 1000) - 1000
    await get_client().hset(record, "created_ms", late)
    cancel = await node.receive_type("job_cancel", timeout=10)
    assert cancel["job_id"] == job_id
    job = await hjobs.job_get(job_id=job_id)
    assert job is not None and (job.state, job.attempt) == (JobState.FAILED, 1)
    await eventually(lambda: slot_free(node_id, job_id))
    assert await node.nothing(0.5), "the job was placed again"
    assert await session.nothing(0.5), "a result for a rejected submit"


async def reserved_on(node_id: str) -> list[str]:
    """The jobs holding a slot on the node."""
    return list(await get_client().zrange(keys.node_reservations(node_id), 0, -1))


async def test_a_rejected_submit_whose_expectation_was_recorded_late_gets_no_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole cluster frozen: the session's expectation timed out, so the session was told
    job_rejected, but Redis ran it when it woke up. The sweep then found the withdrawn job
    expected and ended, and sent its failure to the session told it was rejected."""
    monkeypatch.setattr(delivery, "EXPECT_GRACE_S", 0.3)
    monkeypatch.setattr(delivery, "EXPECT_RECHECK_S", 0.3)
    _, node = await online_node("gpu", max_jobs=1)
    _, session = await online_session(await new_api_key("acme"))
    dispatch_unanswered(monkeypatch, applied=True)
    original = submit.outbox_expect

    async def expect_applied_unanswered(**kwargs: Any) -> None:
        await original(**kwargs)
        raise DependencyDown("session_result_expect: TimeoutError (injected)")

    monkeypatch.setattr(submit, "outbox_expect", expect_applied_unanswered)
    rejected = await submit_and_answer(session, "r-1")
    assert (rejected["type"], rejected["code"]) == ("job_rejected", "DEPENDENCY_DOWN")
    cancel = await node.receive_type("job_cancel", timeout=5)
    job = await hjobs.job_get(job_id=cancel["job_id"])
    assert job is not None and job.state is JobState.FAILED
    # Several sweep turns and expectation checks later: still nothing for the session.
    assert await session.nothing(2.0), "a result for a rejected submit"
