"""Results being handed to resumed sessions when their instance drains (a rolling restart).

Two real daphne processes (N and S) share one database and one hot state with
``CHANNEL_LAYER=cluster``. Sessions whose jobs finished while they were away resume on S, which
drains while it is still handing them those (large) results; they resume again on N and must
get every result exactly once (PROTOCOL.md: results that completed while away are delivered
after ``session_ready``, on any instance). First pinned in 46e7147 as a strict xfail: a result
taken out of the outbox while the drain closed the socket was never sent, and gone for good.
Closing now waits for a take in flight (baec7c6), and a frame taken while the client itself
hangs up goes back to the outbox (forced in ``sessions/tests/test_delivery.py``).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scheduler_sdk import Job, NodeAgent
from tests.e2e.harness.deployment import Credentials, Deployment
from tests.e2e.harness.http import job_until_terminal
from tests.e2e.harness.raw import RawSession, settle
from tests.e2e.harness.sdk import Recorder, node_agent

pytestmark = pytest.mark.e2e

TENANT = "acme"
NODES = 2
DRAIN_GRACE_S = 3.0
ENV = {"HEARTBEAT_INTERVAL_MS": "1000", "ACK_TIMEOUT": "1.5", "DRAIN_GRACE": str(DRAIN_GRACE_S)}
SESSIONS = 4
JOBS = 8  # per session
RESULT_BYTES = 500_000  # large results make each delivery take a while
RESULT_WAIT_S = 20.0


@dataclass
class Padded(Recorder):
    """A recorder whose results are ``RESULT_BYTES`` larger."""

    async def __call__(self, job: Job) -> dict[str, Any]:
        result = await super().__call__(job)
        return {**result, "pad": "x" * RESULT_BYTES}


@pytest.fixture
def deployment(
    tmp_path: Path, redis_cluster_url: str, e2e_template_db: Path
) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "hopping", redis_cluster_url, e2e_template_db, ENV)
    try:
        yield deployment
    finally:
        deployment.close()


async def eventually_true(condition: Any, *, timeout: float) -> bool:
    """Poll ``condition`` (every millisecond, so a state that passes quickly is seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def test_results_being_delivered_when_an_instance_drains_reach_the_session_later(
    deployment: Deployment, service: str
) -> None:
    credentials: Credentials = deployment.credentials(nodes=NODES, tenants=[TENANT])
    key = credentials.api_keys[TENANT]
    agents: list[NodeAgent] = []
    sessions: list[RawSession] = []
    try:
        n_inst, s_inst = deployment.start_instances("N", "S")
        gate = asyncio.Event()
        recorder = Padded(delay_s=0.0, progress=False, gate=gate)
        for token in credentials.node_tokens:
            agent = node_agent(n_inst.ws, token, service, recorder, max_jobs=SESSIONS * JOBS)
            agents.append(agent)
            await agent.start(timeout_s=10)
        away = [await RawSession.start(n_inst.ws, key) for _ in range(SESSIONS)]
        sessions += away
        replies = await asyncio.gather(
            *(
                session.submit_until_accepted(f"hop-{i}-{k}", service, {})
                for i, session in enumerate(away)
                for k in range(JOBS)
            )
        )
        jobs = [reply["job_id"] for reply in replies]
        assert await eventually_true(lambda: len(recorder.runs) == len(jobs), timeout=10)
        for session in away:
            await session.close()
        gate.set()  # every job finishes while its session is away
        for job_id in jobs:
            body = await job_until_terminal(n_inst.url, key, job_id, timeout=RESULT_WAIT_S)
            assert body["status"] == "FINISHED", body

        on_s = await asyncio.gather(
            *(RawSession.start(s_inst.ws, key, session_id=s.session_id) for s in away)
        )
        sessions += on_s
        assert await eventually_true(
            lambda: sum(s.count("job_result") for s in on_s) >= SESSIONS, timeout=RESULT_WAIT_S
        )
        s_inst.process.send_signal(signal.SIGUSR1)  # while S is still delivering
        assert await asyncio.to_thread(s_inst.wait_exit, DRAIN_GRACE_S + 5) == 0
        for session in on_s:
            await session.wait_closed()
        assert {s.close_code for s in on_s} == {1012}
        back = [await RawSession.start(n_inst.ws, key, session_id=s.session_id) for s in away]
        sessions += back

        def delivered(job_id: str) -> int:
            return sum(s.count("job_result", job_id=job_id) for s in [*on_s, *back])

        await eventually_true(lambda: all(delivered(job_id) for job_id in jobs), timeout=10)
        await settle()
        counts = Counter(delivered(job_id) for job_id in jobs)
        assert counts == {1: len(jobs)}, f"jobs by results delivered: {dict(counts)}"
    finally:
        for session in sessions:
            await session.close()
        for agent in agents:
            await agent.stop(grace_s=0)
