"""SessionClient against a fake scheduler that speaks PROTOCOL.md over a real WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import protocol as p
from scheduler_sdk import (
    Replaced,
    RequestFailed,
    SessionClient,
    SessionClosed,
    SessionEvent,
    Unauthorized,
)
from scheduler_sdk.tests.conftest import FAST_BACKOFF
from scheduler_sdk.tests.fake_scheduler import API_KEY, FakeScheduler


@pytest.fixture
async def make_client(fake: FakeScheduler) -> AsyncIterator[Callable[..., SessionClient]]:
    clients: list[SessionClient] = []

    def make(api_key: str = API_KEY, **options: Any) -> SessionClient:
        options.setdefault("backoff", FAST_BACKOFF)
        clients.append(SessionClient(fake.session_url, api_key, **options))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: Callable[..., SessionClient]) -> SessionClient:
    return make_client()


def result_of(job_id: str, request_id: str, **fields: object) -> p.SessionJobResult:
    return p.SessionJobResult(job_id=job_id, request_id=request_id, ok=True, **fields)  # type: ignore[arg-type]


async def test_submit_is_accepted_then_progress_and_result_arrive(
    fake: FakeScheduler, make_client: Callable[..., SessionClient]
) -> None:
    results: list[p.SessionJobResult] = []
    client = make_client(on_result=results.append)
    assert await client.connect() == "s-1"
    events = client.events()

    reply = await client.submit("r1", "asr", {"audio": "…"}, features=["fp16"], timeout_ms=5_000)
    assert reply == p.JobAccepted(request_id="r1", job_id="j-r1", node_id="n-1")
    [submit] = await fake.frames("job_submit")
    assert submit.frame == p.JobSubmit(
        request_id="r1",
        service=p.ServiceRef(id="asr"),
        features=["fp16"],
        payload={"audio": "…"},
        timeout_ms=5_000,
    )

    progress = p.SessionJobProgress(job_id="j-r1", request_id="r1", progress=0.5)
    final = result_of("j-r1", "r1", result={"text": "hi"})
    await fake.send_session(progress)
    await fake.send_session(final)

    assert await client.result("j-r1", timeout_s=2) == final
    seen: list[SessionEvent] = [await anext(events), await anext(events)]
    assert seen == [progress, final]
    assert results == [final]


async def test_a_rejected_submit_returns_the_rejection(
    fake: FakeScheduler, client: SessionClient
) -> None:
    fake.accept_submits = False
    await client.connect()
    submitting = asyncio.create_task(client.submit("r1", "asr", {}))
    await fake.frames("job_submit")
    rejected = p.JobRejected(
        request_id="r1", code=p.ErrorCode.NO_AVAILABLE_NODE, message="no node serves asr now"
    )
    await fake.send_session(rejected)
    assert await submitting == rejected


async def test_an_error_about_a_request_fails_its_submit(
    fake: FakeScheduler, client: SessionClient
) -> None:
    fake.accept_submits = False
    await client.connect()
    submitting = asyncio.create_task(client.submit("r1", "asr", {}))
    await fake.frames("job_submit")
    error = p.Error(
        code=p.ErrorCode.RATE_LIMITED, message="slow down", ref=p.ErrorRef(request_id="r1")
    )
    await fake.send_session(error)
    with pytest.raises(RequestFailed, match="RATE_LIMITED: slow down"):
        await submitting


async def test_after_1012_it_resumes_its_session_and_gets_results_finished_meanwhile(
    fake: FakeScheduler, client: SessionClient
) -> None:
    await client.connect()
    accepted = await client.submit("r1", "asr", {})
    assert isinstance(accepted, p.JobAccepted)
    await fake.close_session(p.CloseCode.SERVICE_RESTART)
    await fake.wait_for(lambda: len(fake.session_ids) == 2, what="a second session_init")

    assert fake.session_ids == [None, "s-1"]
    final = result_of(accepted.job_id, "r1", result={"text": "while away"})
    await fake.send_session(final)
    assert await client.result(accepted.job_id, timeout_s=2) == final
    assert (client.session_id, client.resumed, client.stats.resumed) == ("s-1", True, 1)


async def test_a_resume_names_the_accepted_jobs_whose_results_have_not_arrived(
    fake: FakeScheduler, client: SessionClient
) -> None:
    """So that a result sent on the connection that died is sent again (session_init's
    ``awaiting``), and one that arrived is not."""
    await client.connect()
    for request_id in ("r1", "r2", "r3"):
        assert isinstance(await client.submit(request_id, "asr", {}), p.JobAccepted)
    await fake.send_session(result_of("j-r2", "r2"))
    await client.result("j-r2", timeout_s=2)
    # A result that overtook its job_accepted is not awaited either.
    await fake.send_session(result_of("j-r4", "r4"))
    await fake.send_session(p.JobAccepted(request_id="r4", job_id="j-r4", node_id="n-1"))
    await client.result("j-r4", timeout_s=2)
    await fake.close_session(p.CloseCode.SERVICE_RESTART)
    await fake.wait_for(lambda: len(fake.awaiting) == 2, what="a second session_init")
    assert fake.awaiting == [None, ["j-r1", "j-r3"]]


async def test_a_submit_unanswered_when_the_connection_dropped_is_sent_again(
    fake: FakeScheduler, client: SessionClient
) -> None:
    fake.accept_submits = False
    await client.connect()
    submitting = asyncio.create_task(client.submit("r1", "asr", {"n": 1}))
    await fake.frames("job_submit")
    await fake.close_session(p.CloseCode.SERVICE_RESTART)

    submits = await fake.frames("job_submit", 2)
    assert [s.connection for s in submits] == [1, 2]
    assert submits[0].frame == submits[1].frame  # same request_id: idempotent
    accepted = p.JobAccepted(request_id="r1", job_id="j1", node_id="n-1")
    await fake.send_session(accepted)
    assert await submitting == accepted
    assert client.stats.submits_resent == 1


async def test_cancel_gets_a_cancelled_result_and_an_unknown_job_an_error(
    fake: FakeScheduler, make_client: Callable[..., SessionClient]
) -> None:
    errors: list[p.Error] = []
    client = make_client(on_error=errors.append)
    await client.connect()
    accepted = await client.submit("r1", "asr", {})
    assert isinstance(accepted, p.JobAccepted)

    await client.cancel(accepted.job_id)
    result = await client.result(accepted.job_id, timeout_s=2)
    assert result.error is not None
    assert (result.ok, result.error.code) == (False, "CANCELLED")

    await client.cancel("j-unknown")
    await fake.wait_for(lambda: client.stats.errors == 1, what="the error")
    assert [(e.code, e.ref) for e in errors] == [
        (p.ErrorCode.JOB_NOT_FOUND, p.ErrorRef(type="job_cancel", job_id="j-unknown"))
    ]


async def test_ping_measures_a_round_trip(fake: FakeScheduler, client: SessionClient) -> None:
    await client.connect()
    rtt = await client.ping()
    assert 0 < rtt < 1
    [ping] = await fake.frames("ping")
    assert isinstance(ping.frame, p.Ping)
    assert ping.frame.ts_ms is not None


async def test_a_bad_api_key_fails_connect_with_a_clear_error(
    fake: FakeScheduler, make_client: Callable[..., SessionClient]
) -> None:
    client = make_client("ak_wrong")
    with pytest.raises(Unauthorized, match="4401"):
        await client.connect()
    await asyncio.sleep(0.3)
    assert len(fake.session_connections) == 1
    with pytest.raises(Unauthorized):
        await client.submit("r1", "asr", {})


async def test_resumed_elsewhere_ends_the_client_and_its_waits(
    fake: FakeScheduler, client: SessionClient
) -> None:
    await client.connect()
    events = client.events()
    waiting = asyncio.create_task(client.result("j1"))
    await asyncio.sleep(0)
    await fake.close_session(p.CloseCode.REPLACED)
    with pytest.raises(Replaced, match="4409"):
        await asyncio.wait_for(waiting, 2)
    assert [event async for event in events] == []
    await client.close()
    with pytest.raises(Replaced):
        await client.submit("r1", "asr", {})


async def test_close_ends_waits_with_session_closed(
    fake: FakeScheduler, client: SessionClient
) -> None:
    await client.connect()
    waiting = asyncio.create_task(client.result("j1"))
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(SessionClosed):
        await waiting
