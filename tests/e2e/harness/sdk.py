"""SDK peers for the tests in which only the nodes' honesty matters, and what they ran."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import Resources
from scheduler_sdk import Job, NodeAgent, SessionClient
from scheduler_sdk.backoff import Backoff


@dataclass
class Recorder:
    """A node's job handler that records what it ran: how many at once, and how often each job.

    It reports progress half way (unless ``progress`` is false), waits for ``gate`` if given,
    works ``delay_s`` and returns the job's payload and id.
    """

    delay_s: float = 0.2
    progress: bool = True
    gate: asyncio.Event | None = None
    running: int = 0
    max_running: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    done: Counter[str] = field(default_factory=Counter)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first run
    finished_at: list[float] = field(default_factory=list)  # loop time of each result

    def finished_within(self, seconds: float) -> int:
        """Jobs this handler finished in the last ``seconds``."""
        since = asyncio.get_running_loop().time() - seconds
        return sum(1 for at in self.finished_at if at >= since)

    async def __call__(self, job: Job) -> dict[str, Any]:
        self.runs[job.job_id] += 1
        self.started.set()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.progress:
                await job.progress(0.5, {"halfway": job.job_id})
            if self.gate is not None:
                await asyncio.wait_for(self.gate.wait(), 30)
            await asyncio.sleep(self.delay_s)
            self.done[job.job_id] += 1
            self.finished_at.append(asyncio.get_running_loop().time())
            return {"echo": job.payload, "job_id": job.job_id}
        finally:
            self.running -= 1


def node_agent(
    ws_base: str,
    token: str,
    service: str,
    handler: Callable[[Job], Any],
    *,
    max_jobs: int,
    **options: Any,
) -> NodeAgent:
    """An SDK node offering ``service``; it reports a light, fixed load so that selection never
    skips it for this machine's real CPU or memory figures, and reconnects quickly."""
    return NodeAgent(
        f"{ws_base}/ws/node/",
        token,
        services=[service],
        max_jobs=max_jobs,
        handlers={service: handler},
        resources=lambda: Resources(cpu_pct=5.0, mem_pct=10.0),
        backoff=options.pop("backoff", Backoff(initial_s=0.05, max_s=0.5)),
        register_timeout_s=5.0,
        connect_kwargs={"proxy": None},
        **options,
    )


def session_client(ws_base: str, api_key: str, **options: Any) -> SessionClient:
    """An SDK session that reconnects quickly."""
    return SessionClient(
        f"{ws_base}/ws/session/",
        api_key,
        backoff=options.pop("backoff", Backoff(initial_s=0.05, max_s=0.5)),
        ready_timeout_s=5.0,
        connect_kwargs={"proxy": None},
        **options,
    )
