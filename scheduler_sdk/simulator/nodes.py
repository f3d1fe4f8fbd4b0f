"""The simulated nodes: ``NodeAgent``s whose handlers sleep, fail or hand jobs back at random."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import protocol as p
from scheduler_sdk.node import Job, JobFailed, ModelNotAvailable, NodeAgent
from scheduler_sdk.simulator.config import SimConfig
from scheduler_sdk.simulator.ledger import Ledger
from scheduler_sdk.simulator.report import NodeReport

SIM_FAILED = "SIM_FAILED"
"""The error code of a simulated handler failure, as the session sees it."""

# An exponential duration is capped at this many times the mean, so one job cannot outlive a run.
EXPONENTIAL_CAP = 10.0


def simulated_agent(
    index: int,
    url: str,
    token: str,
    *,
    config: SimConfig,
    ledger: Ledger,
    options: dict[str, Any],
) -> NodeAgent:
    """Node ``index`` (0-based): every service of ``config``, its dispatches and broken
    ``max_jobs`` promises entered in ``ledger``; ``options`` go to ``NodeAgent``."""
    seed = config.seed
    rng = random.Random(None if seed is None else f"{seed}-node-{index}")
    handler = _handler(index, rng, config, ledger)
    options.setdefault("rng", random.Random(None if seed is None else f"{seed}-agent-{index}"))
    options.setdefault("resources", _calm_load(rng))
    return NodeAgent(
        url,
        token,
        services=list(config.services),
        max_jobs=config.max_jobs,
        handlers=dict.fromkeys(config.services, handler),
        on_violation=lambda v: ledger.overbooked(index, v),
        **options,
    )


def node_report(index: int, agent: NodeAgent) -> NodeReport:
    stats = agent.stats
    return NodeReport(
        name=f"node {index + 1}",
        node_id=agent.node_id,
        max_jobs=agent.max_jobs,
        jobs_started=stats.jobs_started,
        succeeded=stats.jobs_succeeded,
        failed=stats.jobs_failed,
        unavailable=stats.jobs_unavailable,
        cancelled=stats.jobs_cancelled,
        max_held_seen=stats.max_held_seen,
        registrations=stats.registrations,
        errors_received=dict(stats.errors_received),
    )


def _handler(
    index: int, rng: random.Random, config: SimConfig, ledger: Ledger
) -> Callable[[Job], Any]:
    async def handle(job: Job) -> dict[str, Any]:
        ledger.dispatched(index, job)
        if rng.random() < config.mna_rate:
            raise ModelNotAvailable(f"simulated: {job.service.id} unavailable on node {index + 1}")
        duration_s = _duration_ms(rng, config) / 1000
        if config.progress:
            await asyncio.sleep(duration_s / 2)
            await job.progress(0.5, {"simulated": True})
            await asyncio.sleep(duration_s / 2)
        else:
            await asyncio.sleep(duration_s)
        if rng.random() < config.fail_rate:
            raise JobFailed(SIM_FAILED, f"simulated failure on node {index + 1}")
        return {
            "request_id": job.payload.get("request_id"),
            "node": index + 1,
            "ms": round(duration_s * 1000),
        }

    return handle


def _duration_ms(rng: random.Random, config: SimConfig) -> float:
    mean = config.job_ms
    kind = config.job_ms_distribution
    if kind == "uniform":
        return rng.uniform(mean / 2, mean * 1.5)
    if kind == "exponential" and mean > 0:
        return min(rng.expovariate(1 / mean), mean * EXPONENTIAL_CAP)
    return mean


def _calm_load(rng: random.Random) -> Callable[[], p.Resources]:
    """Made-up, moderate load: many agents share one machine, whose real load means nothing
    for any one of them and could push them over the scheduler's resource thresholds."""

    def probe() -> p.Resources:
        return p.Resources(cpu_pct=round(rng.uniform(5, 25), 1), mem_pct=30.0)

    return probe
