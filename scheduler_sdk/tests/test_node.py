"""NodeAgent against a fake scheduler that speaks PROTOCOL.md over a real WebSocket."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

import protocol as p
from scheduler_sdk import (
    Backoff,
    Job,
    JobFailed,
    ModelNotAvailable,
    NodeAgent,
    Replaced,
    Unauthorized,
    Violation,
    __version__,
)
from scheduler_sdk.tests.fake_scheduler import NODE_TOKEN, FakeScheduler

MakeAgent = Callable[..., NodeAgent]


def assign(job_id: str, *, attempt: int = 1, service: str = "asr", **fields: Any) -> p.JobAssign:
    fields.setdefault("features", [])
    fields.setdefault("payload", {})
    fields.setdefault("deadline_ms", int(time.time() * 1000) + 60_000)
    return p.JobAssign(job_id=job_id, attempt=attempt, service=p.ServiceRef(id=service), **fields)


async def echo(job: Job) -> dict[str, Any]:
    return {"echo": job.payload}


def about(fake: FakeScheduler, job_id: str) -> list[p.Frame]:
    """Every frame the node sent about ``job_id``, in order."""
    return [r.frame for r in fake.received if getattr(r.frame, "job_id", None) == job_id]


async def test_registers_then_heartbeats_with_real_load_and_jitter(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    agent = make_agent(
        services=["asr", p.ServiceRef(id="tts", version="2")],
        features=["fp16"],
        max_jobs=3,
        region="eu",
        handlers={"asr": echo, "tts": echo},
        rng=random.Random(3),
    )
    assert await agent.start() == "n-1"
    assert (agent.instance_id, agent.heartbeat_interval_ms) == ("fake-1", 100)
    [register] = await fake.frames("node_register")
    assert isinstance(register.frame, p.NodeRegister)
    assert register.frame == p.NodeRegister(
        token=NODE_TOKEN,
        version=f"scheduler-sdk/{__version__}",
        services=[p.ServiceRef(id="asr"), p.ServiceRef(id="tts", version="2")],
        features=["fp16"],
        max_jobs=3,
        resources=register.frame.resources,
        region="eu",
    )

    beats = await fake.frames("node_heartbeat", 6)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(beats)]
    # ±20 % of 100 ms; sleeps never end early, but a busy machine may wake them late.
    assert all(0.078 <= gap <= 0.12 + 0.08 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.005, f"no jitter in {gaps}"
    for beat in beats:
        assert isinstance(beat.frame, p.NodeHeartbeat)
        assert beat.frame.running == []
        assert beat.frame.resources.gpu_pct is None
        assert 0 <= beat.frame.resources.cpu_pct <= 100
        assert 0 < beat.frame.resources.mem_pct <= 100  # a real machine uses some memory
    assert "gpu_pct" not in p.dump(beats[0].frame)


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

    assert about(fake, "j1") == [
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
    assert about(fake, "j1") == [
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
    assert about(fake, "j1") == [mna.frame]  # not acked: the scheduler gives it to another node


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
    assert violations == [Violation("j2", 3, 2, 2), Violation("j3", 4, 3, 2)]
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
    assert about(fake, "j1") == [
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


async def test_reconnects_after_1012_with_backoff_and_delivers_results(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    release = asyncio.Event()

    async def asr(job: Job) -> dict[str, Any]:
        if job.job_id == "late":
            await release.wait()
        return {"job": job.job_id}

    backoff = Backoff(initial_s=0.3, max_s=1.0, jitter=0.1)
    agent = make_agent(handlers={"asr": asr}, backoff=backoff)
    await agent.start()
    await fake.send_node(assign("done", attempt=1))
    await fake.send_node(assign("late", attempt=2))
    await fake.frames("job_result")
    await fake.frames("job_started", 2)

    closed_at = time.monotonic()
    await fake.close_node(p.CloseCode.SERVICE_RESTART, "instance stopping")
    await fake.wait_for(lambda: not agent.connected, what="the agent to notice")
    release.set()  # "late" finishes while the node is disconnected

    registers = await fake.frames("node_register", 2)
    assert registers[1].connection == 2
    assert registers[1].at - closed_at >= 0.27  # first delay: 0.3 s ± 10 %
    assert 0.27 <= agent.stats.backoff_delays[0] <= 0.33
    await agent.wait_registered(2)
    assert agent.stats.registrations == 2
    await fake.wait_for(lambda: len(fake.of_type("job_result", connection=2)) == 2)
    on_second = [r.frame for r in fake.received if r.connection == 2 and r.type == "job_result"]
    # "done" was sent just before the drop and may have been lost with it: a repeat is harmless.
    assert on_second == [
        p.NodeJobResult(job_id="done", attempt=1, ok=True, result={"job": "done"}),
        p.NodeJobResult(job_id="late", attempt=2, ok=True, result={"job": "late"}),
    ]
    assert agent.stats.results_resent == 1


async def test_a_refused_token_stops_the_agent_with_a_clear_error(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    agent = make_agent(token="nt_wrong", handlers={"asr": echo})
    with pytest.raises(Unauthorized, match=r"refused this node token.*4401"):
        await agent.start()
    await asyncio.sleep(0.3)  # longer than any backoff delay of the test settings
    assert len(fake.node_connections) == 1


async def test_a_replaced_node_stops_and_drops_its_jobs(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    cancelled = asyncio.Event()

    async def forever(job: Job) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return {}

    agent = make_agent(handlers={"asr": forever})
    await agent.start()
    await fake.send_node(assign("j1"))
    await fake.frames("job_started")
    await fake.close_node(p.CloseCode.REPLACED, "replaced")
    with pytest.raises(Replaced, match="4409"):
        await asyncio.wait_for(agent.wait_stopped(), 2)
    assert cancelled.is_set()
    await asyncio.sleep(0.3)
    assert len(fake.node_connections) == 1


async def test_stop_drains_lets_running_jobs_finish_and_closes(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    async def quick(job: Job) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return {"done": True}

    agent = make_agent(handlers={"asr": quick})
    await agent.start()
    await fake.send_node(assign("j1"))
    await fake.frames("job_started")
    await agent.stop(grace_s=2)

    types = [r.type for r in fake.received if r.type != "node_heartbeat"]
    assert types == ["node_register", "job_ack", "job_started", "node_drain", "job_result"]
    await fake.wait_for(lambda: fake.node_connections[0].close_code == 1000)
    assert len(fake.node_connections) == 1


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
    progress = [f.progress for f in about(fake, "j1") if isinstance(f, p.NodeJobProgress)]
    assert progress == [0.0, 1.0]
    assert result.frame == p.NodeJobResult(job_id="j1", attempt=1, ok=True, result={"sent": 2})
    assert agent.stats.progress_dropped == 49


async def test_progress_outside_0_to_1_is_a_handler_bug() -> None:
    async def report(job: Job, progress: float, data: dict[str, Any] | None) -> bool:
        raise AssertionError(f"progress {progress} was reported")

    job = Job(assign("j1"), report)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        await job.progress(1.5)


def test_every_advertised_service_needs_a_handler() -> None:
    agent = NodeAgent("ws://unused", "t", services=["asr", "tts"], handlers={"asr": echo})
    with pytest.raises(ValueError, match="no handler for advertised services: tts"):
        asyncio.run(agent.run())


async def test_a_large_backlog_after_a_reconnect_stays_under_the_frame_limit(
    fake: FakeScheduler, make_agent: MakeAgent
) -> None:
    """120 results resent after a drop arrive complete and no faster than the scheduler's
    default limit (burst 100, then 50 frames/s), so none is refused with RATE_LIMITED."""
    jobs = 120
    agent = make_agent(handlers={"asr": echo}, max_jobs=jobs, backoff=Backoff(initial_s=0.05))
    await agent.start()
    for n in range(jobs):
        await fake.send_node(assign(f"j{n}"))
    await fake.frames("job_result", jobs, timeout_s=10)
    await fake.close_node(p.CloseCode.SERVICE_RESTART, "instance stopping")
    await agent.wait_registered(2)
    await fake.wait_for(lambda: len(fake.of_type("job_result", connection=2)) == jobs, timeout_s=10)
    arrivals = sorted(r.at for r in fake.received if r.connection == 2)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= 100, f"{busiest} frames in one second"
    assert {r.frame.job_id for r in fake.of_type("job_result", connection=2)} == {  # type: ignore[attr-defined]
        f"j{n}" for n in range(jobs)
    }
