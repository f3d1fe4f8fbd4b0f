"""A NodeAgent's life cycle and connection (registration, heartbeats, reconnects, the outbox,
stopping) against a fake scheduler that speaks PROTOCOL.md over a real WebSocket."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import pytest

import protocol as p
from scheduler_sdk import Backoff, Job, NodeAgent, Replaced, Unauthorized, __version__
from scheduler_sdk.tests.conftest import MakeAgent, echo
from scheduler_sdk.tests.fake_scheduler import NODE_TOKEN, FakeScheduler, assign


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
