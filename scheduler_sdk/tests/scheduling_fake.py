"""A scheduler that schedules for real, in memory, over WebSockets, to run the simulator against.

``SchedulingFake`` keeps the promises of PROTOCOL.md (slots up to ``max_jobs``, one job per
request id, exactly one result per job to each session that submitted it) unless told to break
one with ``misbehave``.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.tests.fake_scheduler import FakeScheduler

MAX_ATTEMPTS = 3
MISBEHAVIOURS = frozenset(
    {
        "duplicate_result",
        "drop_result",
        "overbook",
        "rebind_request",
        "double_dispatch",
        "refuse_first",
    }
)


@dataclass
class FakeNode:
    ws: ServerConnection
    max_jobs: int
    services: set[str]
    held: set[str] = field(default_factory=set)


@dataclass
class FakeJob:
    job_id: str
    request_id: str
    service: p.ServiceRef
    payload: dict[str, Any]
    sessions: list[ServerConnection]
    node_id: str = ""
    attempt: int = 1
    tried: set[str] = field(default_factory=set)
    result: p.SessionJobResult | None = None
    ended: bool = False


@dataclass
class SchedulingFake(FakeScheduler):
    """Any ``nt_…`` token is a node, any ``sk_…`` key a session; ``misbehave`` breaks promises.

    - ``duplicate_result``: the first job's result goes to its sessions twice.
    - ``drop_result``: the first job's result is never delivered.
    - ``overbook``: every job goes to the first node, full or not.
    - ``rebind_request``: a repeated request id gets a new job.
    - ``double_dispatch``: the first job's attempt 1 goes to two nodes.
    - ``refuse_first``: the first submit is rejected ``NO_AVAILABLE_NODE`` with every slot free.
    """

    misbehave: frozenset[str] = frozenset()
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    job_of_request: dict[str, str] = field(default_factory=dict)
    finished: int = 0
    refused: bool = False
    _job_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        assert self.misbehave <= MISBEHAVIOURS, self.misbehave

    def _node_of(self, ws: ServerConnection) -> str | None:
        return next((n for n, node in self.nodes.items() if node.ws is ws), None)

    async def _authenticate(self, ws: ServerConnection, first: p.Frame) -> bool:
        if isinstance(first, p.NodeRegister) and first.token.startswith("nt_"):
            node_id = f"n-{first.token[3:]}"
            self.nodes[node_id] = FakeNode(ws, first.max_jobs, {s.id for s in first.services})
            registered = p.NodeRegistered(
                node_id=node_id, heartbeat_interval_ms=self.heartbeat_interval_ms, instance_id="f"
            )
            await ws.send(p.dump(registered))
            return True
        if isinstance(first, p.SessionInit) and first.api_key.startswith("sk_"):
            ready = p.SessionReady(session_id=f"s-{next(self._ids)}", instance_id="f")
            await ws.send(p.dump(ready))
            return True
        await ws.close(p.CloseCode.UNAUTHORIZED, "bad credentials")
        return False

    async def _reply(self, ws: ServerConnection, frame: p.Frame) -> None:
        node_id = self._node_of(ws)
        if isinstance(frame, p.JobSubmit):
            await self._submit(ws, frame)
        elif node_id is None:
            return
        elif isinstance(frame, p.NodeJobResult):
            await self._finish(node_id, frame)
        elif isinstance(frame, p.ModelNotAvailable) and frame.job_id is not None:
            await self._unavailable(node_id, frame.job_id, frame.attempt)
        elif isinstance(frame, p.NodeJobProgress) and frame.job_id in self.jobs:
            job = self.jobs[frame.job_id]
            progress = p.SessionJobProgress(
                job_id=job.job_id, request_id=job.request_id, progress=frame.progress
            )
            await self._to_sessions(job, progress)

    # --- sessions ---------------------------------------------------------------------------

    async def _submit(self, ws: ServerConnection, frame: p.JobSubmit) -> None:
        known = self.job_of_request.get(frame.request_id)
        if known is not None and "rebind_request" not in self.misbehave:
            job = self.jobs[known]
            await _send(ws, p.JobAccepted(request_id=job.request_id, job_id=known, node_id="n"))
            if ws not in job.sessions:
                job.sessions.append(ws)
                if job.result is not None:
                    await _send(ws, job.result)
            return
        node_id = self._pick(frame.service.id, exclude=set())
        if "refuse_first" in self.misbehave and not self.job_of_request and not self.refused:
            self.refused, node_id = True, None
        if node_id is None:
            rejected = p.JobRejected(
                request_id=frame.request_id, code=p.ErrorCode.NO_AVAILABLE_NODE, message="full"
            )
            await _send(ws, rejected)
            return
        job = FakeJob(
            f"j{next(self._job_ids)}", frame.request_id, frame.service, frame.payload, [ws]
        )
        self.jobs[job.job_id] = job
        self.job_of_request[frame.request_id] = job.job_id
        await _send(
            ws, p.JobAccepted(request_id=job.request_id, job_id=job.job_id, node_id=node_id)
        )
        await self._assign(job, node_id)
        if "double_dispatch" in self.misbehave and job.job_id == "j1":
            other = next(n for n in self.nodes if n != node_id)
            await _send(self.nodes[other].ws, self._assign_frame(job))

    def _pick(self, service: str, *, exclude: set[str]) -> str | None:
        if "overbook" in self.misbehave:
            return next(iter(self.nodes))
        free = [
            (len(node.held), node_id)
            for node_id, node in self.nodes.items()
            if service in node.services
            and node_id not in exclude
            and len(node.held) < node.max_jobs
            and not node.ws.close_code
        ]
        return min(free)[1] if free else None

    async def _to_sessions(self, job: FakeJob, frame: p.Frame) -> None:
        for ws in job.sessions:
            await _send(ws, frame)

    # --- nodes ------------------------------------------------------------------------------

    def _assign_frame(self, job: FakeJob) -> p.JobAssign:
        return p.JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            service=job.service,
            features=[],
            payload=job.payload,
            deadline_ms=p.MAX_SAFE_INT // 2,
        )

    async def _assign(self, job: FakeJob, node_id: str) -> None:
        job.node_id = node_id
        job.tried.add(node_id)
        self.nodes[node_id].held.add(job.job_id)
        await _send(self.nodes[node_id].ws, self._assign_frame(job))

    async def _finish(self, node_id: str, frame: p.NodeJobResult) -> None:
        job = self.jobs.get(frame.job_id)
        if job is None or job.ended or (job.node_id, job.attempt) != (node_id, frame.attempt):
            return  # a repeat, a stale attempt or another node's job: changes nothing
        self.nodes[node_id].held.discard(job.job_id)
        result = p.SessionJobResult(
            job_id=job.job_id,
            request_id=job.request_id,
            ok=frame.ok,
            result=frame.result,
            error=frame.error,
        )
        await self._end(job, result)

    async def _end(self, job: FakeJob, result: p.SessionJobResult) -> None:
        job.ended = True
        self.finished += 1
        first = self.finished == 1
        if first and "drop_result" in self.misbehave:
            return
        job.result = result
        await self._to_sessions(job, result)
        if first and "duplicate_result" in self.misbehave:
            await self._to_sessions(job, result)

    async def _unavailable(self, node_id: str, job_id: str, attempt: int | None) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.ended or (job.node_id, job.attempt) != (node_id, attempt):
            return
        self.nodes[node_id].held.discard(job_id)
        job.attempt += 1
        other = self._pick(job.service.id, exclude=job.tried)
        if other is None or job.attempt > MAX_ATTEMPTS:
            error = p.JobError(code="MODEL_NOT_AVAILABLE", message="no node could serve it")
            failed = p.SessionJobResult(
                job_id=job_id, request_id=job.request_id, ok=False, error=error
            )
            await self._end(job, failed)
            return
        await self._assign(job, other)


async def _send(ws: ServerConnection, frame: p.Frame) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(p.dump(frame))
