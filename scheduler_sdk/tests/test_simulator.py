"""The simulator against a fake scheduler that schedules for real, in memory, over WebSockets.

``SchedulingFake`` keeps the promises of PROTOCOL.md (slots up to ``max_jobs``, one job per
request id, exactly one result per job to each session that submitted it) unless told to break
one; each check of the simulator is shown to catch its broken promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.simulator import (
    SIM_FAILED,
    SimConfig,
    SimulationError,
    Simulator,
    Summary,
    percentile,
)
from scheduler_sdk.tests.conftest import FAST_BACKOFF
from scheduler_sdk.tests.fake_scheduler import FakeScheduler, running

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


@contextlib.asynccontextmanager
async def scheduling(**options: Any) -> AsyncIterator[SchedulingFake]:
    async with running(SchedulingFake(**options)) as fake:
        yield fake


def fast(**fields: Any) -> SimConfig:
    """Test-speed settings: short jobs, no warm-up, short grace."""
    defaults: dict[str, Any] = {
        "services": ("asr", "nmt"),
        "max_jobs": 2,
        "jobs": 12,
        "job_ms": 20.0,
        "warmup_s": 0.0,
        "grace_s": 0.3,
        "settle_s": 0.2,
        "job_timeout_ms": 1_000,
        "connect_timeout_s": 3.0,
        "seed": 7,
    }
    return SimConfig(**{**defaults, **fields})


async def simulate(fake: FakeScheduler, config: SimConfig, nodes: int = 2) -> Summary:
    simulator = Simulator(
        fake.url,
        [f"nt_{i}" for i in range(nodes)],
        ["sk_sim", "sk_sim"],
        config,
        agent_options={"backoff": FAST_BACKOFF},
        client_options={"backoff": FAST_BACKOFF},
    )
    return await asyncio.wait_for(simulator.run(), 20)


# --- a correct scheduler --------------------------------------------------------------------


async def test_a_clean_run_accounts_for_every_job_and_sees_no_violation() -> None:
    config = fast(jobs=40, fail_rate=0.2, mna_rate=0.1, duplicate_rate=0.3)
    async with scheduling() as fake:
        summary = await simulate(fake, config, nodes=3)

    assert summary.violations == () and summary.problems == () and summary.ok
    assert summary.submitted == 40
    assert summary.accepted + summary.rejected_total == 40
    assert summary.accepted == len(fake.jobs)
    assert summary.completed + summary.failed_total == summary.accepted
    assert summary.failed.get(SIM_FAILED, 0) > 0  # the fail rate reached the sessions
    assert sum(n.unavailable for n in summary.node_reports) > 0  # and the MNA rate the nodes
    assert summary.duplicates_submitted > 0
    assert summary.duplicates_same_job == summary.duplicates_submitted
    assert summary.missing == summary.duplicate_results == 0
    assert summary.notes == ()  # the MNA rate explains rejections, if any
    assert summary.progress_events > 0
    assert summary.throughput > 0
    assert summary.latency_p50_ms is not None and summary.latency_p99_ms is not None
    assert 10 <= summary.latency_p50_ms <= summary.latency_p99_ms
    assert all(n.max_held_seen <= n.max_jobs == 2 for n in summary.node_reports)

    text = summary.render()
    assert "submitted   40" in text
    assert f"completed   {summary.completed}" in text
    assert "latency     submit to result (all results): p50 " in text
    assert "No invariant violations seen." in text


async def test_submits_keep_within_the_slots_of_the_nodes_when_unpaced() -> None:
    # rate 0: each session keeps at most its share of the 2 x 2 slots in flight, so the
    # scheduler never has to reject for want of a node.
    async with scheduling() as fake:
        summary = await simulate(fake, fast(jobs=30, frame_budget=0), nodes=2)
    assert summary.ok, summary.render()
    assert (summary.accepted, summary.rejected_total, summary.completed) == (30, 0, 30)
    assert summary.notes == ()
    assert summary.submit_rate_cap is None
    assert max(n.max_held_seen for n in summary.node_reports) == 2


async def test_a_rejection_with_free_slots_is_noted_but_breaks_no_promise() -> None:
    async with scheduling(misbehave=frozenset({"refuse_first"})) as fake:
        summary = await simulate(fake, fast(jobs=6), nodes=2)
    assert summary.ok
    assert summary.rejected == {"NO_AVAILABLE_NODE": 1}
    [note] = summary.notes
    assert note.startswith("1 submit(s) were rejected NO_AVAILABLE_NODE although this run")
    assert f"NOTE: {note}" in summary.render()


async def test_a_duration_run_is_paced_at_the_asked_rate() -> None:
    async with scheduling() as fake:
        summary = await simulate(fake, fast(jobs=None, duration_s=1.0, rate=10), nodes=2)
    assert summary.ok, summary.render()
    assert summary.submit_rate_cap == 10
    # Two sessions at 10/s for 1 s: 20 submits, give or take the first and the last.
    assert 16 <= summary.submitted <= 22


async def test_the_rate_is_capped_by_the_frame_budget_of_the_nodes() -> None:
    # Each node sends 4 frames per job (ack, started, progress, result): 2 nodes under 40
    # frames/s take 20 jobs/s, 10/s for each of the 2 sessions.
    simulator = Simulator("ws://127.0.0.1:1", ["nt_0", "nt_1"], ["sk", "sk"], fast(rate=100))
    assert simulator.submit_rate_cap == 10


async def test_stop_ends_a_run_forever_and_waits_for_its_jobs() -> None:
    async with scheduling() as fake:
        simulator = Simulator(
            fake.url, ["nt_0"], ["sk_a"], fast(jobs=None, job_ms=100), agent_options={}
        )
        running_sim = asyncio.create_task(simulator.run())
        await fake.wait_for(lambda: simulator.live.results >= 3, what="3 results")
        assert "results " in simulator.progress_line()
        simulator.stop()
        summary = await asyncio.wait_for(running_sim, 10)
    assert summary.ok, summary.render()
    assert summary.completed == summary.accepted >= 3
    assert summary.missing == summary.unfinished == 0


async def test_a_refused_credential_stops_the_run_before_it_starts() -> None:
    async with scheduling() as fake:
        simulator = Simulator(fake.url, ["bad-token"], ["sk_a"], fast())
        with pytest.raises(SimulationError, match="1 of 2 simulated peers could not connect"):
            await simulator.run()
        assert fake.jobs == {}


async def test_an_unreachable_scheduler_is_reported() -> None:
    simulator = Simulator("ws://127.0.0.1:9", [], ["sk_a"], fast(connect_timeout_s=0.5))
    with pytest.raises(SimulationError, match="no answer from the scheduler"):
        await simulator.run()


# --- a scheduler that breaks its promises ---------------------------------------------------


@pytest.mark.parametrize(
    ("misbehaviour", "kind", "detail"),
    [
        ("duplicate_result", "duplicate_result", "was delivered 2 times to session"),
        ("drop_result", "missing_result", "was accepted for session"),
        ("overbook", "max_jobs", "of max_jobs 2"),
        ("rebind_request", "duplicate_job", "got job j"),
        ("double_dispatch", "double_dispatch", "job j1 attempt 1 ran on node"),
    ],
)
async def test_a_broken_promise_is_reported_as_a_violation(
    misbehaviour: str, kind: str, detail: str
) -> None:
    duplicates = 1.0 if misbehaviour == "rebind_request" else 0.0
    # Unpaced, so that each session has both of its slots in flight at once.
    config = fast(jobs=8, duplicate_rate=duplicates, frame_budget=0)
    async with scheduling(misbehave=frozenset({misbehaviour})) as fake:
        summary = await simulate(fake, config, nodes=2)

    assert not summary.ok
    kinds = {v.kind for v in summary.violations}
    assert kind in kinds, summary.render()
    assert any(detail in v.detail for v in summary.violations if v.kind == kind)
    text = summary.render()
    assert f"VIOLATIONS: {len(summary.violations)}" in text
    assert f"  {kind}: " in text
    if kind == "duplicate_result":
        assert summary.duplicate_results == 1 and kinds == {kind}
    if kind == "missing_result":
        assert summary.missing == 1 and kinds == {kind}


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"fail_rate must be within 0\.\.1"):
        SimConfig(fail_rate=1.5)
    with pytest.raises(ValueError, match="max_jobs must be at least 1"):
        SimConfig(max_jobs=0)
    assert SimConfig(jobs=None).forever
