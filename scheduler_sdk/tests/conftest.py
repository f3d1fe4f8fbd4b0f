from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from scheduler_sdk import Backoff, Job, NodeAgent
from scheduler_sdk.tests.fake_scheduler import NODE_TOKEN, FakeScheduler, running

FAST_BACKOFF = Backoff(initial_s=0.05, max_s=0.2)

MakeAgent = Callable[..., NodeAgent]


async def echo(job: Job) -> dict[str, Any]:
    """A handler that returns the job's payload."""
    return {"echo": job.payload}


@pytest.fixture
async def fake() -> AsyncIterator[FakeScheduler]:
    async with running(FakeScheduler()) as scheduler:
        yield scheduler


@pytest.fixture
async def make_agent(fake: FakeScheduler) -> AsyncIterator[MakeAgent]:
    """NodeAgents on the fake scheduler with test-speed settings; all stopped at the end."""
    agents: list[NodeAgent] = []

    def make(token: str = NODE_TOKEN, **options: Any) -> NodeAgent:
        options.setdefault("services", ["asr"])
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("register_timeout_s", 2.0)
        agent = NodeAgent(fake.node_url, token, **options)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.stop(grace_s=0)
