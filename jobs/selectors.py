"""Reads about jobs: a tenant's job, and where a job's progress goes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.errors import Forbidden, JobNotFound, StaleAttempt
from core.state import STATE
from hotstate import jobs as hjobs
from hotstate.jobs import JobView

ROUTE_TTL_S = 1.0
MAX_CACHED_ROUTES = 100_000


async def job_view(*, tenant: str, job_id: str) -> JobView:
    """A tenant's job, for the HTTP API; another tenant's is not found."""
    job = await hjobs.job_get(job_id=job_id)
    if job is None or job.tenant != tenant:
        raise JobNotFound(f"no job {job_id}")
    return job


@dataclass(frozen=True)
class Route:
    request_id: str
    node_id: str | None
    attempt: int
    subscribers: frozenset[str]
    fetched: float
    ended: bool = False


@dataclass
class Routes:
    """Each job's route as last read, by job id (a part of ``STATE``)."""

    by_job: dict[str, Route] = field(default_factory=dict)


async def route_get(*, job_id: str) -> Route | None:
    """Where a job's progress goes: read once a second at most per job, per process."""
    routes = STATE.part(Routes).by_job
    route = routes.get(job_id)
    now = time.monotonic()
    if route is not None and now - route.fetched < ROUTE_TTL_S:
        return route
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        routes.pop(job_id, None)
        return None
    if len(routes) > MAX_CACHED_ROUTES:
        routes.clear()
    route = Route(
        job.request_id, job.node_id, job.attempt, job.subscribers, now, job.state.terminal
    )
    routes[job_id] = route
    return route


def route_forget(*, job_id: str) -> None:
    STATE.part(Routes).by_job.pop(job_id, None)


async def route_fenced(*, node_id: str, job_id: str, attempt: int) -> Route:
    """The route of a job that ``node_id`` reports on at ``attempt``, fenced like a reply:
    an unknown job, another node's job or another attempt is refused (PROTOCOL.md)."""
    route = await route_get(job_id=job_id)
    if route is None:
        raise JobNotFound(f"no job {job_id}")
    if route.node_id != node_id:
        raise Forbidden(f"job {job_id} is not assigned to this node")
    if route.attempt != attempt:
        raise StaleAttempt(f"job {job_id} is at attempt {route.attempt}")
    return route
