"""The jobs of a NodeAgent (its job table and handler outcomes) against a fake scheduler that
speaks PROTOCOL.md over a real WebSocket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import protocol as p
from scheduler_sdk import Job, JobFailed, ModelNotAvailable, Violation
from scheduler_sdk.tests.conftest import MakeAgent, echo
from scheduler_sdk.tests.fake_scheduler import FakeScheduler, assign


async def test_job_is_acked_started_and_answered_with_the_same_attempt(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    seen: list[Job] = []
    agent = make_agent()

    @agent.handler("asr")
    async def asr(job: Job) -> dict[str, Any]:
        seen.append(job)
        assert await job.progress(0.5, {"partial": "HE"})
        return {"text": str(job.payload["audio"]).upper()}

    await agent.start()
    await fake.send_node(assign("j1", attempt=3, payload={"audio": "hello"}, features=["fp16"]))
    await fake.frames("job_result")

    assert fake.about("j1") == [
        p.JobAck(job_id="j1", attempt=3),
        p.JobStarted(job_id="j1", attempt=3),
        p.NodeJobProgress(job_id="j1", attempt=3, progress=0.5, data={"partial": "HE"}),
        p.NodeJobResult(job_id="j1", attempt=3, ok=True, result={"text": "HELLO"}),
    ]
    [job] = seen
    assert (job.job_id, job.attempt, job.service.id, job.features) == ("j1", 3, "asr", ("fp16",))
    assert 55 < job.remaining_s <= 60
    assert agent.held_job_ids == []
    assert (agent.stats.jobs_started, agent.stats.jobs_succeeded) == (1, 1)


async def _raise_job_failed(job: Job) -> dict[str, Any]:
    raise JobFailed("BAD_AUDIO", "cannot decode the audio")


async def _crash(job: Job) -> dict[str, Any]:
    raise RuntimeError("boom")


async def _return_a_list(job: Job) -> Any:
    return ["not", "an", "object"]


async def _return_an_object(job: Job) -> dict[str, Any]:
    return {"value": object()}


@pytest.mark.parametrize(
    ("handler", "code", "message"),
    [
        (_raise_job_failed, "BAD_AUDIO", "cannot decode the audio"),
        (_crash, "INTERNAL_ERROR", "RuntimeError: boom"),
        (_return_a_list, "BAD_RESULT", "handler returned list"),
        (_return_an_object, "BAD_RESULT", "result is not a JSON object"),
    ],
)
async def test_a_failing_handler_ends_the_job_with_an_error_result(
    fake: FakeScheduler, make_agent: MakeAgent, handler: Any, code: str, message: str
) -> None:
    agent = make_agent(handlers={"asr": handler})
    await agent.start()
    await fake.send_node(assign("j1", attempt=2))
    [result] = await fake.frames("job_result")
    assert isinstance(result.frame, p.NodeJobResult)
    assert (result.frame.ok, result.frame.attempt, result.frame.result) == (False, 2, None)
    assert result.frame.error is not None
    assert result.frame.error.code == code
    assert result.frame.error.message.startswith(message)
    assert agent.stats.jobs_failed == 1


async def test_model_not_available_is_reported_instead_of_a_result(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    async def no_weights(job: Job) -> dict[str, Any]:
        raise ModelNotAvailable("weights not downloaded")

    agent = make_agent(handlers={"asr": no_weights})
    await agent.start()
    await fake.send_node(assign("j1", attempt=2))
    await fake.frames("model_not_available")
    assert fake.about("j1") == [
        p.JobAck(job_id="j1", attempt=2),
        p.JobStarted(job_id="j1", attempt=2),
        p.ModelNotAvailable(
            job_id="j1", attempt=2, service=p.ServiceRef(id="asr"), reason="weights not downloaded"
        ),
    ]
    assert agent.stats.jobs_unavailable == 1
    assert agent.held_job_ids == []


async def test_a_job_for_a_service_without_handler_is_handed_back(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    agent = make_agent(handlers={"asr": echo})
    await agent.start()
    await fake.send_node(assign("j1", service="nmt"))
    [mna] = await fake.frames("model_not_available")
    assert isinstance(mna.frame, p.ModelNotAvailable)
    assert (mna.frame.job_id, mna.frame.attempt, mna.frame.service.id) == ("j1", 1, "nmt")
    assert fake.about("j1") == [mna.frame]  # not acked: the scheduler gives it to another node


async def test_no_more_than_max_jobs_run_and_extra_assignments_are_queued_as_violations(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    release = asyncio.Event()
    active = peak = 0

    async def slow(job: Job) -> dict[str, Any]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await release.wait()
        finally:
            active -= 1
        return {"job": job.job_id}

    violations: list[Violation] = []
    agent = make_agent(max_jobs=2, handlers={"asr": slow}, on_violation=violations.append)
    await agent.start()
    for n in range(4):  # max_jobs + 2, which the scheduler must never do
        await fake.send_node(assign(f"j{n}", attempt=n + 1))

    await fake.frames("job_ack", 4)
    await fake.frames("job_started", 2)
    beats_before = len(fake.of_type("node_heartbeat"))
    beat = (await fake.frames("node_heartbeat", beats_before + 1))[-1]
    assert (active, len(fake.of_type("job_started"))) == (2, 2)
    assert violations == [
        Violation("j2", 3, 2, 2, (("j0", 1), ("j1", 2))),
        Violation("j3", 4, 3, 2, (("j0", 1), ("j1", 2), ("j2", 3))),
    ]
    assert agent.stats.violations == violations
    assert isinstance(beat.frame, p.NodeHeartbeat)
    assert sorted(beat.frame.running) == ["j0", "j1", "j2", "j3"]  # queued ones hold slots too

    release.set()
    results = await fake.frames("job_result", 4)
    assert peak == 2
    assert (agent.stats.max_running_seen, agent.stats.max_held_seen) == (2, 4)
    assert {r.frame.job_id for r in results} == {"j0", "j1", "j2", "j3"}  # type: ignore[attr-defined]
    first_result = fake.received.index(results[0])
    later_starts = [r.frame.job_id for r in fake.received[first_result:] if r.type == "job_started"]  # type: ignore[attr-defined]
    assert sorted(later_starts) == ["j2", "j3"]


async def test_job_cancel_cancels_the_handler_and_nothing_more_is_sent(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    cancelled = asyncio.Event()

    async def stubborn(job: Job) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            await job.progress(1.0)  # a handler that swallows the cancel still gets nothing out
            return {"late": True}
        return {}

    agent = make_agent(handlers={"asr": stubborn})
    await agent.start()
    await fake.send_node(assign("j1", attempt=2))
    await fake.frames("job_started")

    await fake.send_node(p.NodeJobCancel(job_id="j1", attempt=1, reason=p.ErrorCode.CANCELLED))
    await fake.send_node(p.NodeJobCancel(job_id="j1", attempt=2, reason=p.ErrorCode.JOB_TIMEOUT))
    await asyncio.wait_for(cancelled.wait(), 2)
    beats = len(fake.of_type("node_heartbeat"))
    beat = (await fake.frames("node_heartbeat", beats + 2))[-1]

    assert isinstance(beat.frame, p.NodeHeartbeat)
    assert beat.frame.running == []
    assert fake.about("j1") == [
        p.JobAck(job_id="j1", attempt=2),
        p.JobStarted(job_id="j1", attempt=2),
    ]
    assert agent.stats.jobs_cancelled == 1


async def test_a_repeated_assignment_is_acked_again_but_run_once(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    runs = 0
    release = asyncio.Event()

    async def once(job: Job) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await release.wait()
        return {}

    agent = make_agent(handlers={"asr": once})
    await agent.start()
    await fake.send_node(assign("j1"))
    await fake.frames("job_started")
    await fake.send_node(assign("j1"))
    await fake.frames("job_ack", 2)
    release.set()
    await fake.frames("job_result")
    assert runs == 1
    assert (agent.stats.duplicate_assigns, agent.stats.violations) == (1, [])


async def test_a_job_past_its_deadline_is_dropped_if_no_cancel_came(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    async def forever(job: Job) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    agent = make_agent(handlers={"asr": forever}, deadline_grace_s=0.1)
    await agent.start()
    await fake.send_node(assign("j1", deadline_ms=int(time.time() * 1000) + 100))
    await fake.frames("job_started")
    await fake.wait_for(lambda: agent.stats.jobs_expired == 1, what="the job to expire")
    assert agent.held_job_ids == []
    assert fake.of_type("job_result") == []


async def test_progress_is_rate_limited_per_job_but_completion_always_goes(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    async def chatty(job: Job) -> dict[str, Any]:
        sent = [await job.progress(n / 100) for n in range(50)]
        sent.append(await job.progress(1.0))
        return {"sent": sent.count(True)}

    agent = make_agent(handlers={"asr": chatty}, progress_interval_s=10)
    await agent.start()
    await fake.send_node(assign("j1"))
    [result] = await fake.frames("job_result")
    progress = [f.progress for f in fake.about("j1") if isinstance(f, p.NodeJobProgress)]
    assert progress == [0.0, 1.0]
    assert result.frame == p.NodeJobResult(job_id="j1", attempt=1, ok=True, result={"sent": 2})
    assert agent.stats.progress_dropped == 49


async def test_progress_outside_0_to_1_is_a_handler_bug() -> None:
    async def report(job: Job, progress: float, data: dict[str, Any] | None) -> bool:
        raise AssertionError(f"progress {progress} was reported")

    job = Job(assign("j1"), report)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        await job.progress(1.5)
