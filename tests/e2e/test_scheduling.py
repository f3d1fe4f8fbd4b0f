"""The scheduling promises of DESIGN.md and PROTOCOL.md, end to end on a real daphne.

Sessions are raw WebSockets and ``urllib``; nodes are SDK ``NodeAgent``s where only their
honesty matters, and raw WebSockets where a test needs a node to misbehave or to count exactly
what it was sent. Each test offers a service of its own, so no test's nodes take another's jobs.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.e2e.harness.deployment import System
from tests.e2e.harness.http import http, job_until_terminal
from tests.e2e.harness.peers import Peers
from tests.e2e.harness.raw import Frame, RawNode, RawSession, settle
from tests.e2e.harness.sdk import Recorder

pytestmark = pytest.mark.e2e

ACK_TIMEOUT_S = 2.0
E2E_ENV = {"ACK_TIMEOUT": str(ACK_TIMEOUT_S)}
# Rejections a submit meets legitimately while every slot is taken; the request id is not bound,
# so the same id is simply tried again.
RETRYABLE = ("NO_AVAILABLE_NODE", "RATE_LIMITED")
RETRY_DELAY_S = 0.12  # 4 submitters per session stay under the 50 frames/s limit


def jobs_url(system: System, *parts: str) -> str:
    return "/".join([f"{system.url}/api/v1/jobs", *parts])


async def http_submit(
    system: System, api_key: str, request_id: str, service: str, payload: Frame
) -> tuple[int, Frame]:
    body = {"request_id": request_id, "service": {"id": service}, "payload": payload}
    return await asyncio.to_thread(http, "POST", jobs_url(system), api_key=api_key, body=body)


async def http_job(system: System, api_key: str, job_id: str) -> Frame:
    status, body = await asyncio.to_thread(http, "GET", jobs_url(system, job_id), api_key=api_key)
    assert status == 200, body
    return body


async def submit_until_accepted(
    session: RawSession, request_id: str, service: str, payload: Frame
) -> Frame:
    return await session.submit_until_accepted(
        request_id, service, payload, retry=RETRYABLE, retry_delay_s=RETRY_DELAY_S
    )


# --- results --------------------------------------------------------------------------------


async def test_every_accepted_job_gets_its_result_exactly_once(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    recorders = [Recorder(delay_s=0.03) for _ in range(2)]
    agents = [
        await peers.agent(e2e_system, token, service, recorder, max_jobs=3)
        for recorder, token in zip(recorders, e2e_system.node_tokens(2), strict=True)
    ]
    session = await peers.session(e2e_system, api_key)
    slots = asyncio.Semaphore(6)  # the nodes' slots: keep that many in flight

    async def one(n: int) -> tuple[Frame, Frame]:
        async with slots:
            accepted = await submit_until_accepted(session, f"once-{n}", service, {"n": n})
            result = await session.expect("job_result", job_id=accepted["job_id"], timeout=10)
        return accepted, result

    done = await asyncio.gather(*(one(n) for n in range(24)))
    await settle()

    job_ids = [accepted["job_id"] for accepted, _ in done]
    assert len(set(job_ids)) == 24
    for n, (accepted, result) in enumerate(done):
        assert result["request_id"] == f"once-{n}" == accepted["request_id"]
        assert result["ok"] is True
        assert result["result"] == {"echo": {"n": n}, "job_id": accepted["job_id"]}
    results = Counter(f["job_id"] for f in session.frames if f["type"] == "job_result")
    assert results == Counter(job_ids), "a result came more or less than once"
    assert session.count("job_progress") >= 1  # relayed while the session was there
    assert session.errors() == []
    assert sum((recorder.runs for recorder in recorders), Counter()) == Counter(job_ids)
    assert all(agent.stats.violations == [] for agent in agents)
    assert all(not agent.stats.errors_received for agent in agents)


# --- idempotency ----------------------------------------------------------------------------


async def test_a_repeated_request_id_yields_one_job_and_one_dispatch(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service])
    first = await peers.session(e2e_system, api_key)
    second = await peers.session(e2e_system, api_key)

    accepted = await first.submit_accepted("same", service, {"v": 1})
    assert accepted["node_id"] == node.node_id, accepted
    job_id = accepted["job_id"]
    assign = await node.expect("job_assign", job_id=job_id)
    await node.report("job_ack", job_id, assign["attempt"])
    await node.report("job_started", job_id, assign["attempt"])

    # The same request id again, from another session of the tenant and from the same one.
    await second.submit("same", service, {"v": 2})
    assert await second.reply("same") == accepted
    await first.submit("same", service, {"v": 3})
    assert await first.reply("same") == accepted

    await node.report("job_result", job_id, assign["attempt"], ok=True, result={"text": "one"})
    for session in (first, second):
        result = await session.expect("job_result", job_id=job_id)
        assert result["ok"] is True and result["result"] == {"text": "one"}, result
        assert result["request_id"] == "same"

    # After the job ended: a new session of the tenant joins it and gets the result at once.
    third = await peers.session(e2e_system, api_key)
    await third.submit("same", service, {"v": 4})
    assert await third.reply("same") == accepted
    assert (await third.expect("job_result", job_id=job_id))["result"] == {"text": "one"}

    await settle()
    assert node.count("job_assign") == 1, node.frames
    assert assign["payload"] == {"v": 1}  # the first submit's job, never a second one
    for session in (first, second, third):
        assert len(session.results(job_id)) == 1, session.frames
        assert session.errors() == []
    assert node.errors() == []


async def test_a_request_repeated_over_http_joins_the_same_job(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service])
    session = await peers.session(e2e_system, api_key)
    accepted = await session.submit_accepted("both-ways", service, {"v": 1})
    job_id = accepted["job_id"]
    assign = await node.expect("job_assign", job_id=job_id)
    await node.report("job_ack", job_id, 1)

    status, body = await http_submit(e2e_system, api_key, "both-ways", service, {"v": 2})
    assert status == 202, body
    assert (body["job_id"], body["request_id"], body["node_id"]) == (
        job_id,
        "both-ways",
        node.node_id,
    )
    await node.report("job_result", job_id, 1, ok=True, result={"text": "one"})
    assert (await session.expect("job_result", job_id=job_id))["result"] == {"text": "one"}
    status, body = await http_submit(e2e_system, api_key, "both-ways", service, {"v": 3})
    assert (status, body.get("job_id"), body.get("status")) == (202, job_id, "FINISHED"), body

    await settle()
    assert node.count("job_assign") == 1 and assign["payload"] == {"v": 1}
    assert len(session.results(job_id)) == 1, session.frames
    assert node.errors() == [], "the node's valid job_result was answered with an error"


async def test_a_job_submitted_over_http_ends_without_an_error_to_its_node(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service])
    status, body = await http_submit(e2e_system, api_key, "http-only", service, {"v": 1})
    assert status == 202, body
    job_id = body["job_id"]
    await node.expect("job_assign", job_id=job_id)
    await node.report("job_ack", job_id, 1)
    await node.report("job_result", job_id, 1, ok=True, result={"text": "http"})
    finished = await job_until_terminal(e2e_system.url, api_key, job_id)
    assert (finished["status"], finished["result"]) == ("FINISHED", {"text": "http"})
    await settle()
    assert node.errors() == [], "the node's valid job_result was answered with an error"


@pytest.mark.parametrize(
    "http_submitters",
    [
        pytest.param(0, id="websocket"),
        pytest.param(2, id="websocket-and-http"),
    ],
)
async def test_concurrent_repeats_yield_one_job_and_one_dispatch(
    e2e_system: System, peers: Peers, api_key: str, service: str, http_submitters: int
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service], max_jobs=4)
    sessions = [await peers.session(e2e_system, api_key) for _ in range(3)]

    async def over_ws(session: RawSession, request_id: str, n: int) -> str:
        accepted = await session.submit_accepted(request_id, service, {"n": n}, timeout=10)
        return str(accepted["job_id"])

    async def over_http(request_id: str, n: int) -> str:
        status, body = await http_submit(e2e_system, api_key, request_id, service, {"n": n})
        assert status == 202, body
        return str(body["job_id"])

    rounds = 3
    for round_ in range(rounds):
        request_id = f"race-{service}-{round_}"  # unique: a bound id outlives its job
        job_ids = await asyncio.gather(
            *(over_ws(session, request_id, n) for n, session in enumerate(sessions)),
            *(over_http(request_id, 10 + n) for n in range(http_submitters)),
        )
        assert len(set(job_ids)) == 1, job_ids
        job_id = job_ids[0]
        assign = await node.expect("job_assign", job_id=job_id)
        await node.report("job_ack", job_id, assign["attempt"])
        await settle()
        assert node.count("job_assign", job_id=job_id) == 1, node.frames
        await node.report("job_result", job_id, assign["attempt"], ok=True, result={"r": round_})
        for session in sessions:
            assert (await session.expect("job_result", job_id=job_id))["result"] == {"r": round_}

    await settle()
    assert node.count("job_assign") == rounds, node.frames
    assert node.errors() == []
    for session in sessions:
        assert session.count("job_result") == rounds, session.frames
        assert session.errors() == []


# --- max_jobs -------------------------------------------------------------------------------


async def test_concurrent_submits_never_give_a_node_more_than_max_jobs(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    max_jobs = 2
    recorders = [Recorder(delay_s=0.15) for _ in range(2)]
    agents = [
        await peers.agent(e2e_system, token, service, recorder, max_jobs=max_jobs)
        for recorder, token in zip(recorders, e2e_system.node_tokens(2), strict=True)
    ]
    sessions = [await peers.session(e2e_system, api_key) for _ in range(3)]
    ws_results: dict[str, Frame] = {}
    http_jobs: list[str] = []

    async def ws_submitter(session: RawSession, name: str) -> None:
        for n in range(3):
            request_id = f"{name}-{n}"
            accepted = await submit_until_accepted(session, request_id, service, {"n": n})
            result = await session.expect("job_result", job_id=accepted["job_id"], timeout=10)
            ws_results[accepted["job_id"]] = result

    async def http_submitter(name: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        for n in range(3):
            while True:
                status, body = await http_submit(
                    e2e_system, api_key, f"{name}-{n}", service, {"n": n}
                )
                if status == 202:
                    http_jobs.append(body["job_id"])
                    break
                assert body.get("code") in RETRYABLE, (status, body)
                assert loop.time() < deadline, f"{name}-{n} not accepted in time"
                await asyncio.sleep(RETRY_DELAY_S)

    # 4 submitters per session and 4 over HTTP, all at once, against 4 slots.
    await asyncio.gather(
        *(
            ws_submitter(session, f"s{i}-t{t}")
            for i, session in enumerate(sessions)
            for t in range(4)
        ),
        *(http_submitter(f"h{t}") for t in range(4)),
    )
    for job_id in http_jobs:
        body = await job_until_terminal(e2e_system.url, api_key, job_id)
        assert body["status"] == "FINISHED", body
    await settle()

    # The node side's own books: an assignment while holding max_jobs is a Violation (the
    # agent queues it rather than run it, so a handler never runs above max_jobs anyway).
    for recorder, agent in zip(recorders, agents, strict=True):
        violations = agent.stats.violations
        assert violations == [], f"node {agent.node_id} was given more than {max_jobs}"
        assert agent.stats.max_held_seen <= max_jobs, agent.stats
        assert recorder.max_running <= max_jobs
        assert recorder.runs, f"node {agent.node_id} got no job"
        assert not agent.stats.errors_received, agent.stats.errors_received
    runs = sum((recorder.runs for recorder in recorders), Counter())
    assert sum(runs.values()) == len(runs) == 3 * 4 * 3 + 4 * 3, "a job ran twice or not at all"
    assert set(runs) == set(ws_results) | set(http_jobs)
    for session in sessions:
        results = Counter(f["job_id"] for f in session.frames if f["type"] == "job_result")
        assert set(results.values()) == {1}, results


# --- stale and foreign replies --------------------------------------------------------------


async def accepted_on(
    session: RawSession, nodes: list[RawNode], request_id: str, service: str
) -> tuple[str, RawNode, RawNode]:
    """Submit once; the job id, the node it went to, and the other node."""
    accepted = await session.submit_accepted(request_id, service, {"q": request_id})
    chosen = next(node for node in nodes if node.node_id == accepted["node_id"])
    other = next(node for node in nodes if node is not chosen)
    return accepted["job_id"], chosen, other


async def test_stale_attempt_and_foreign_node_replies_are_refused_and_change_nothing(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    nodes = [await peers.node(e2e_system, token, [service]) for token in e2e_system.node_tokens(2)]
    session = await peers.session(e2e_system, api_key)
    job_id, owner, foreign = await accepted_on(session, nodes, "fenced", service)
    assign = await owner.expect("job_assign", job_id=job_id)
    assert assign["attempt"] == 1
    await owner.report("job_ack", job_id, 1)

    # The owner with a wrong attempt: STALE_ATTEMPT for every kind of reply.
    await owner.report("job_started", job_id, 2)
    await owner.expect_error("STALE_ATTEMPT", job_id=job_id)
    await owner.report("job_progress", job_id, 2, progress=0.5)
    await owner.expect_error("STALE_ATTEMPT", job_id=job_id)
    await owner.report("job_result", job_id, 2, ok=True, result={"by": "stale"})
    await owner.expect_error("STALE_ATTEMPT", job_id=job_id)
    # Another node, with the right attempt: FORBIDDEN.
    await foreign.report("job_started", job_id, 1)
    await foreign.expect_error("FORBIDDEN", job_id=job_id)
    await foreign.report("job_progress", job_id, 1, progress=0.5)
    await foreign.expect_error("FORBIDDEN", job_id=job_id)
    await foreign.report("job_result", job_id, 1, ok=False, error={"code": "X", "message": "x"})
    await foreign.expect_error("FORBIDDEN", job_id=job_id)
    await foreign.send(
        {
            "type": "model_not_available",
            "job_id": job_id,
            "attempt": 1,
            "service": {"id": service},
            "reason": "not mine",
        }
    )
    await foreign.expect_error("FORBIDDEN", job_id=job_id)
    # A job nobody has: JOB_NOT_FOUND.
    await owner.report("job_result", "j_nobody_has_this", 1, ok=True, result={})
    await owner.expect_error("JOB_NOT_FOUND", job_id="j_nobody_has_this")

    # Nothing changed: the job is where the ack left it, and the session heard nothing.
    await asyncio.sleep(0.3)
    body = await http_job(e2e_system, api_key, job_id)
    assert (body["status"], body["attempt"], body["node_id"]) == ("ACCEPTED", 1, owner.node_id)
    assert session.count("job_result") == session.count("job_progress") == 0, session.frames

    # The right replies still work, and a repeated result is harmless.
    await owner.report("job_started", job_id, 1)
    await owner.report("job_progress", job_id, 1, progress=0.5, data={"half": True})
    progress = await session.expect("job_progress", job_id=job_id)
    assert progress["progress"] == 0.5 and progress["request_id"] == "fenced"
    await owner.report("job_result", job_id, 1, ok=True, result={"by": "owner"})
    await owner.report("job_result", job_id, 1, ok=True, result={"by": "owner"})
    result = await session.expect("job_result", job_id=job_id)
    assert result["ok"] is True and result["result"] == {"by": "owner"}, result
    await settle()
    assert len(session.results(job_id)) == 1, session.frames
    assert len(owner.errors()) == 4 and len(foreign.errors()) == 4  # no new error
    assert foreign.count("job_assign") == 0
    body = await http_job(e2e_system, api_key, job_id)
    assert (body["status"], body["result"]) == ("FINISHED", {"by": "owner"})


async def test_after_a_failover_the_old_attempt_is_stale_and_the_new_node_finishes(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    nodes = [await peers.node(e2e_system, token, [service]) for token in e2e_system.node_tokens(2)]
    session = await peers.session(e2e_system, api_key)
    job_id, first, second = await accepted_on(session, nodes, "slow-ack", service)
    await first.expect("job_assign", job_id=job_id, attempt=1)
    # The first node never acks: after ACK_TIMEOUT the job moves to the other node.
    reassigned = await second.expect("job_assign", job_id=job_id, timeout=ACK_TIMEOUT_S + 5)
    assert reassigned["attempt"] == 2
    cancel = await first.expect("job_cancel", job_id=job_id)
    assert (cancel["attempt"], cancel["reason"]) == (1, "NODE_LOST")

    # The first node wakes up late: its attempt is stale, and the new attempt is not its own.
    await first.report("job_ack", job_id, 1)
    await first.expect_error("STALE_ATTEMPT", job_id=job_id)
    await first.report("job_result", job_id, 1, ok=True, result={"by": "first"})
    await first.expect_error("STALE_ATTEMPT", job_id=job_id)
    await first.report("job_result", job_id, 2, ok=True, result={"by": "first"})
    await first.expect_error("FORBIDDEN", job_id=job_id)
    await second.report("job_result", job_id, 1, ok=True, result={"by": "second-stale"})
    await second.expect_error("STALE_ATTEMPT", job_id=job_id)
    assert session.count("job_result") == 0, session.frames

    await second.report("job_ack", job_id, 2)
    await second.report("job_result", job_id, 2, ok=True, result={"by": "second"})
    result = await session.expect("job_result", job_id=job_id)
    assert result["result"] == {"by": "second"}, result
    await settle()
    assert len(session.results(job_id)) == 1, session.frames
    assert session.count("job_accepted") == 1
    assert first.count("job_assign") == 1 and second.count("job_assign") == 1
    body = await http_job(e2e_system, api_key, job_id)
    assert (body["status"], body["attempt"], body["node_id"]) == ("FINISHED", 2, second.node_id)


# --- resume ---------------------------------------------------------------------------------


async def test_a_resumed_session_gets_what_finished_while_it_was_away_once(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service])
    away = await peers.session(e2e_system, api_key)
    accepted = await away.submit_accepted("while-away", service, {"x": 1})
    job_id = accepted["job_id"]
    await node.expect("job_assign", job_id=job_id)
    await node.report("job_ack", job_id, 1)
    await node.report("job_started", job_id, 1)
    await away.close()

    # The job progresses and finishes while no socket holds the session.
    await node.report("job_progress", job_id, 1, progress=0.5)
    await node.report("job_result", job_id, 1, ok=True, result={"text": "done"})
    assert (await job_until_terminal(e2e_system.url, api_key, job_id))["status"] == "FINISHED"

    # Another tenant naming the session id starts a session of its own and gets nothing.
    other_key = e2e_system.api_key("other-tenant")
    stranger = await peers.session(e2e_system, other_key, away.session_id)
    assert stranger.session_id != away.session_id
    await settle()
    assert stranger.count("job_result") == 0, stranger.frames
    await stranger.close()

    back = await peers.session(e2e_system, api_key, away.session_id)
    assert back.session_id == away.session_id
    result = await back.expect("job_result", job_id=job_id)
    assert result["ok"] is True and result["result"] == {"text": "done"}, result
    assert result["request_id"] == "while-away"
    assert back.frames[0]["type"] == "session_ready"  # the result comes after it
    await settle()
    assert len(back.results(job_id)) == 1, back.frames
    assert back.count("job_progress") == 0  # progress sent while away is dropped
    await back.close()

    # Delivered means delivered: resuming again brings no second copy.
    again = await peers.session(e2e_system, api_key, away.session_id)
    assert again.session_id == away.session_id
    await settle()
    assert again.count("job_result") == 0, again.frames


# --- endings the scheduler makes ------------------------------------------------------------


async def test_cancelled_and_timed_out_jobs_are_reported_once_and_free_their_slot(
    e2e_system: System, peers: Peers, api_key: str, service: str
) -> None:
    (token,) = e2e_system.node_tokens(1)
    node = await peers.node(e2e_system, token, [service], max_jobs=1)
    session = await peers.session(e2e_system, api_key)

    # Cancelled by the session: the node is told, the session gets CANCELLED once.
    cancelled = await submit_until_accepted(session, "to-cancel", service, {})
    await node.expect("job_assign", job_id=cancelled["job_id"])
    await node.report("job_ack", cancelled["job_id"], 1)
    await session.send({"type": "job_cancel", "job_id": cancelled["job_id"]})
    cancel = await node.expect("job_cancel", job_id=cancelled["job_id"])
    assert (cancel["attempt"], cancel["reason"]) == (1, "CANCELLED")
    result = await session.expect("job_result", job_id=cancelled["job_id"])
    assert result["ok"] is False and result["error"]["code"] == "CANCELLED", result

    # The node's only slot is free at once: the next job goes to it, and times out there.
    timed = await session.submit_accepted("to-time-out", service, {}, timeout_ms=1000)
    await node.expect("job_assign", job_id=timed["job_id"])
    await node.report("job_ack", timed["job_id"], 1)
    await session.submit("while-full", service, {})
    assert (await session.reply("while-full"))["code"] == "NO_AVAILABLE_NODE"  # 1 slot, taken
    cancel = await node.expect("job_cancel", job_id=timed["job_id"], timeout=5)
    assert (cancel["attempt"], cancel["reason"]) == (1, "JOB_TIMEOUT")
    result = await session.expect("job_result", job_id=timed["job_id"])
    assert result["ok"] is False and result["error"]["code"] == "JOB_TIMEOUT", result

    # A late result changes nothing, the slot is free again, and an ended job cannot be
    # cancelled.
    await node.report("job_result", timed["job_id"], 1, ok=True, result={"late": True})
    await session.submit_accepted("after", service, {})
    await session.send({"type": "job_cancel", "job_id": cancelled["job_id"]})
    await session.expect_error("JOB_NOT_FOUND", job_id=cancelled["job_id"])
    await settle()
    assert len(session.results(cancelled["job_id"])) == 1, session.frames
    assert len(session.results(timed["job_id"])) == 1, session.frames
