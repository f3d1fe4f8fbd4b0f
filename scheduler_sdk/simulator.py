"""Drive a running scheduler with simulated nodes and sessions, and check what it promises.

No Django: it takes node tokens, API keys and the scheduler's base URL (``ws://host:port``),
so it runs against any deployment. ``manage.py simulate`` creates the credentials and runs it.

1. Connect every node (a ``NodeAgent`` whose handlers sleep, fail with ``fail_rate`` or raise
   ``ModelNotAvailable`` with ``mna_rate``) and every session (a ``SessionClient``). A refused
   credential or an unreachable scheduler ends the run before it starts (``SimulationError``).
2. Each session submits jobs: ``rate`` per second, or (``rate`` 0) as fast as the system takes
   them, keeping at most its share of all nodes' slots in flight. Either way no peer is pushed
   past ``frame_budget`` frames per second, so the scheduler's rate limit never drops a frame.
3. A ``duplicate_rate`` share of the accepted requests is submitted again later, from a random
   session of the same tenant, to exercise idempotency.
4. Submitting ends after ``jobs`` submits, after ``duration_s``, or on ``stop()``. Jobs still
   running then get until their timeout plus ``grace_s`` to finish, and every session
   ``settle_s`` more, so that a late second copy of a result is still seen.
5. The ``Summary`` counts everything and lists each broken promise (``SimViolation``): a node
   asked to hold more than ``max_jobs``, one job attempt dispatched to two nodes, a result
   delivered twice or never, a result for another request, a repeated ``request_id`` that got a
   different job (or was refused), a submit that got no reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import protocol as p
from scheduler_sdk.errors import RequestFailed, SdkError
from scheduler_sdk.node import Job, JobFailed, ModelNotAvailable, NodeAgent, Violation
from scheduler_sdk.session import SessionClient

logger = logging.getLogger(__name__)

Distribution = Literal["fixed", "uniform", "exponential"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("fixed", "uniform", "exponential")
SIM_FAILED = "SIM_FAILED"
"""The error code of a simulated handler failure, as the session sees it."""

# Frames a node sends per job it runs: job_ack, job_started, job_result (job_progress is extra).
NODE_FRAMES_PER_JOB = 3
# An exponential duration is capped at this many times the mean, so one job cannot outlive a run.
EXPONENTIAL_CAP = 10.0
# Rejections that say nothing about idempotency: a repeated request may meet them legitimately.
TRANSIENT_REJECTIONS = frozenset({p.ErrorCode.RATE_LIMITED, p.ErrorCode.DEPENDENCY_DOWN})
MAX_RENDERED_VIOLATIONS = 20


class SimulationError(Exception):
    """The run could not start: the scheduler is unreachable or refused a credential."""


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``jobs`` and ``duration_s`` both ``None``: run until ``stop()``."""

    services: tuple[str, ...] = ("asr", "nmt", "tts")
    max_jobs: int = 4
    jobs: int | None = 200
    """Total submits over all sessions (repeated request ids not counted)."""
    duration_s: float | None = None
    rate: float = 0.0
    """Submits per second per session; 0 submits as fast as the nodes' slots allow."""
    job_ms: float = 200.0
    """Mean duration of a simulated job."""
    job_ms_distribution: Distribution = "uniform"
    """``fixed``; ``uniform`` between half and 1.5 times the mean; ``exponential`` (capped)."""
    fail_rate: float = 0.0
    mna_rate: float = 0.0
    duplicate_rate: float = 0.0
    progress: bool = True
    """Handlers report progress halfway (one more frame per job)."""
    frame_budget: float = 40.0
    """Frames/s each simulated peer stays under (the scheduler refuses above 50/s); 0: no cap."""
    job_timeout_ms: int = 30_000
    reply_timeout_s: float = 10.0
    grace_s: float = 10.0
    settle_s: float = 0.5
    warmup_s: float = 1.0
    """Pause between the nodes registering and the first submit: every scheduler instance
    learns of a node within 1 s (PROTOCOL.md, ``node_registered``)."""
    connect_timeout_s: float = 10.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.services or any(not s for s in self.services):
            problems.append("services must be non-empty ids")
        if self.max_jobs < 1:
            problems.append("max_jobs must be at least 1")
        if self.jobs is not None and self.jobs < 0:
            problems.append("jobs must not be negative")
        if self.duration_s is not None and self.duration_s <= 0:
            problems.append("duration_s must be positive")
        for name in ("rate", "job_ms", "frame_budget", "grace_s", "settle_s", "warmup_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        for name in ("fail_rate", "mna_rate", "duplicate_rate"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be within 0..1")
        if self.job_ms_distribution not in DISTRIBUTIONS:
            problems.append(f"job_ms_distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if self.job_timeout_ms < 1 or self.reply_timeout_s <= 0 or self.connect_timeout_s <= 0:
            problems.append("timeouts must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def forever(self) -> bool:
        return self.jobs is None and self.duration_s is None


@dataclass(frozen=True)
class SimViolation:
    """A promise of PROTOCOL.md or DESIGN.md that the scheduler was seen to break."""

    kind: str
    """``max_jobs``, ``double_dispatch``, ``duplicate_result``, ``missing_result``,
    ``unexpected_result``, ``wrong_result``, ``duplicate_job``, ``duplicate_rejected``,
    ``no_reply``."""
    detail: str


@dataclass(frozen=True)
class NodeReport:
    name: str
    node_id: str | None
    max_jobs: int
    jobs_started: int
    succeeded: int
    failed: int
    unavailable: int
    cancelled: int
    max_held_seen: int
    registrations: int
    errors_received: Mapping[str, int]


@dataclass(frozen=True)
class Summary:
    """What a run saw. ``ok`` is false when any violation or peer failure was seen."""

    nodes: int
    sessions: int
    elapsed_s: float
    submit_rate_cap: float | None
    """Per-session submits/s the run was paced at (``None``: unpaced)."""
    submitted: int
    accepted: int
    rejected: Mapping[str, int]
    submit_errors: Mapping[str, int]
    duplicates_submitted: int
    duplicates_same_job: int
    duplicates_rejected: Mapping[str, int]
    completed: int
    failed: Mapping[str, int]
    missing: int
    unfinished: int
    """Accepted jobs still outstanding when the run was aborted (not counted as missing)."""
    duplicate_results: int
    progress_events: int
    throughput: float
    """Results per second, from the first submit to the last result."""
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    violations: tuple[SimViolation, ...]
    notes: tuple[str, ...]
    """Oddities that break no promise by themselves but may point at one."""
    problems: tuple[str, ...]
    """Peers that failed (a node replaced, a session closed): not the scheduler's promises,
    but the run's figures are incomplete."""
    node_reports: tuple[NodeReport, ...]
    session_errors: Mapping[str, int]
    aborted: bool

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def ok(self) -> bool:
        return not self.violations and not self.problems

    def render(self) -> str:
        """The summary as text for a terminal."""
        lines = [
            f"Simulated {self.nodes} node(s) and {self.sessions} session(s) for "
            f"{self.elapsed_s:.1f} s" + (" (aborted)" if self.aborted else "") + ".",
            f"  submitted   {self.submitted}"
            + (
                f" (paced at {self.submit_rate_cap:.1f}/s per session)"
                if self.submit_rate_cap
                else ""
            ),
            f"  accepted    {self.accepted}",
            f"  rejected    {self.rejected_total}{_codes(self.rejected)}",
        ]
        if self.submit_errors:
            lines.append(
                f"  errors      {sum(self.submit_errors.values())}{_codes(self.submit_errors)}"
            )
        lines += [
            f"  completed   {self.completed}",
            f"  failed      {self.failed_total}{_codes(self.failed)}",
            f"  missing     {self.missing}",
            f"  duplicated  {self.duplicate_results} result(s) delivered more than once",
        ]
        if self.unfinished:
            lines.append(f"  unfinished  {self.unfinished} (still running when aborted)")
        lines.append(
            f"  repeats     {self.duplicates_submitted} request id(s) submitted again: "
            f"{self.duplicates_same_job} answered with the same job, "
            f"{sum(self.duplicates_rejected.values())} rejected{_codes(self.duplicates_rejected)}"
        )
        lines.append(f"  throughput  {self.throughput:.1f} results/s")
        lines.append(
            "  latency     submit to result (all results): "
            f"p50 {_ms(self.latency_p50_ms)}  p95 {_ms(self.latency_p95_ms)}  "
            f"p99 {_ms(self.latency_p99_ms)}"
        )
        if self.session_errors:
            lines.append(f"  session error frames{_codes(self.session_errors)}")
        if self.node_reports:
            lines.append("  nodes:")
            for node in self.node_reports:
                errors = _codes(node.errors_received)
                lines.append(
                    f"    {node.name} ({node.node_id or 'never registered'}): "
                    f"ran {node.jobs_started}, ok {node.succeeded}, failed {node.failed}, "
                    f"unavailable {node.unavailable}, cancelled {node.cancelled}; "
                    f"max held {node.max_held_seen}/{node.max_jobs}"
                    + (f"; reconnected {node.registrations - 1}" if node.registrations > 1 else "")
                    + (f"; error frames{errors}" if errors else "")
                )
        for note in self.notes:
            lines.append(f"NOTE: {note}")
        for problem in self.problems:
            lines.append(f"PROBLEM: {problem}")
        if self.violations:
            lines.append(f"VIOLATIONS: {len(self.violations)}")
            for violation in self.violations[:MAX_RENDERED_VIOLATIONS]:
                lines.append(f"  {violation.kind}: {violation.detail}")
            if len(self.violations) > MAX_RENDERED_VIOLATIONS:
                lines.append(f"  ... and {len(self.violations) - MAX_RENDERED_VIOLATIONS} more")
        else:
            lines.append("No invariant violations seen.")
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q ≤ 100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


class _Pacer:
    """Hands out send times ``1/rate`` apart; concurrent callers queue up in call order."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class _Request:
    request_id: str
    session: int
    service: str
    submitted_at: float
    job_id: str | None = None


@dataclass
class _Delivery:
    at: float
    result: p.SessionJobResult


@dataclass
class _Live:
    """Counters the progress line reads while the run goes on."""

    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    in_flight: int = 0
    results: int = 0
    ok: int = 0


class Simulator:
    """One run: ``len(node_tokens)`` simulated nodes and ``len(api_keys)`` sessions.

    ``url`` is the scheduler's base (``ws://host:port``); the node and session endpoints are
    ``/ws/node/`` and ``/ws/session/`` below it. ``agent_options`` and ``client_options`` go to
    every ``NodeAgent`` and ``SessionClient`` (a test passes a fast backoff through them).
    """

    def __init__(
        self,
        url: str,
        node_tokens: Sequence[str],
        api_keys: Sequence[str],
        config: SimConfig | None = None,
        *,
        agent_options: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not api_keys:
            raise ValueError("a simulation needs at least one session (API key)")
        self.config = config or SimConfig()
        base = url.rstrip("/")
        self.url = base
        self.node_url = f"{base}/ws/node/"
        self.session_url = f"{base}/ws/session/"
        seed = self.config.seed
        self._run_id = uuid.UUID(int=random.Random(seed).getrandbits(128)).hex[:8]
        self._seq = itertools.count(1)
        self._violations: list[SimViolation] = []
        self._problems: list[str] = []
        self.live = _Live()

        self._agents = [
            self._agent(i, token, dict(agent_options or {})) for i, token in enumerate(node_tokens)
        ]
        self._clients = [
            SessionClient(
                self.session_url,
                key,
                on_result=functools.partial(self._on_result, i),
                on_progress=self._on_progress,
                on_error=self._on_session_error,
                rng=random.Random(None if seed is None else f"{seed}-session-{i}"),
                **dict(client_options or {}),
            )
            for i, key in enumerate(api_keys)
        ]
        self._session_rngs = [
            random.Random(None if seed is None else f"{seed}-submit-{i}")
            for i in range(len(api_keys))
        ]
        self.submit_rate_cap = self._rate_cap()
        self._pacers = [_Pacer(self.submit_rate_cap) for _ in api_keys]
        # Closed loop (rate 0): each session keeps its share of all slots in flight.
        self._window: list[asyncio.Semaphore] | None = None
        self._fits_slots = False
        """Closed loop with no more jobs in flight than our nodes have slots."""
        if self.config.rate == 0:
            slots = len(self._agents) * self.config.max_jobs
            shares = _window_shares(slots, len(api_keys), fallback=self.config.max_jobs)
            self._window = [asyncio.Semaphore(share) for share in shares]
            self._fits_slots = bool(slots) and sum(shares) <= slots

        self._requests: list[_Request] = []
        self._expected: dict[tuple[int, str], str] = {}  # (session, job_id) -> request_id
        self._deliveries: dict[tuple[int, str], list[_Delivery]] = {}
        self._arrived: dict[tuple[int, str], asyncio.Event] = {}
        self._dispatched: dict[tuple[str, int], int] = {}  # (job_id, attempt) -> node index
        self._rejected: Counter[str] = Counter()
        self._submit_errors: Counter[str] = Counter()
        self._dup_rejected: Counter[str] = Counter()
        self._session_errors: Counter[str] = Counter()
        self._duplicates_submitted = 0
        self._duplicates_same_job = 0
        self._progress_events = 0
        self._dead_sessions: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._remaining = self.config.jobs
        self._stopping = asyncio.Event()
        self._aborting = asyncio.Event()
        self._started_at: float | None = None
        self._last_line: tuple[float, int] = (0.0, 0)
        self._first_submit: float | None = None

    # --- control ----------------------------------------------------------------------------

    def stop(self, *, abort: bool = False) -> None:
        """End submitting; with ``abort``, stop waiting for outstanding jobs too."""
        self._stopping.set()
        if abort:
            self._aborting.set()
            for task in list(self._tasks):
                task.cancel()

    def progress_line(self) -> str:
        """One line on the run so far; the rate is over the time since the previous line."""
        now = time.monotonic()
        live = self.live
        elapsed = now - self._started_at if self._started_at else 0.0
        since, results_then = self._last_line
        rate = (live.results - results_then) / (now - since) if since and now > since else 0.0
        self._last_line = (now, live.results)
        return (
            f"[{elapsed:6.1f}s] submitted {live.submitted}  accepted {live.accepted}  "
            f"rejected {live.rejected}  results {live.results} (ok {live.ok})  "
            f"in flight {live.in_flight}  {rate:.1f} results/s  "
            f"violations {len(self._violations)}"
        )

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> Summary:
        """Connect, submit, wait for the results, disconnect; the ``Summary``."""
        self._started_at = time.monotonic()
        self._last_line = (self._started_at, 0)
        try:
            await self._connect()
            if self.config.warmup_s and self._agents:
                await asyncio.sleep(self.config.warmup_s)
            await self._submit_phase()
            await self._drain_phase()
        finally:
            await self._disconnect()
        return self._summary(time.monotonic() - self._started_at)

    async def _connect(self) -> None:
        timeout = self.config.connect_timeout_s
        starts = [agent.start(timeout_s=timeout) for agent in self._agents]
        connects = [client.connect(timeout_s=timeout) for client in self._clients]
        outcomes = await asyncio.gather(*starts, *connects, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            first = failures[0]
            if isinstance(first, TimeoutError):
                reason = f"no answer from the scheduler at {self.url} within {timeout} s"
            else:
                reason = str(first) or repr(first)
            raise SimulationError(
                f"{len(failures)} of {len(outcomes)} simulated peers could not connect: {reason}"
            )
        logger.info(
            "simulation %s: %d node(s) and %d session(s) connected",
            self._run_id,
            len(self._agents),
            len(self._clients),
        )

    async def _submit_phase(self) -> None:
        loops = [asyncio.create_task(self._session_loop(i)) for i in range(len(self._clients))]
        stopping = asyncio.create_task(self._stopping.wait())
        waits: set[asyncio.Task[Any]] = {*loops, stopping}
        timeout = self.config.duration_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(loop.done() for loop in loops):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done or (deadline is not None and time.monotonic() >= deadline):
                break
            waits -= done
        for loop in loops:
            loop.cancel()
        stopping.cancel()
        await asyncio.gather(*loops, stopping, return_exceptions=True)
        self._stopping.set()

    async def _drain_phase(self) -> None:
        while self._tasks and not self._aborting.is_set():
            await asyncio.wait(set(self._tasks))
        if not self._aborting.is_set() and self.config.settle_s:
            aborted = asyncio.create_task(self._aborting.wait())
            await asyncio.wait({aborted}, timeout=self.config.settle_s)
            aborted.cancel()

    async def _disconnect(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in self._clients), return_exceptions=True)
        grace = 0.0 if self._aborting.is_set() else 2.0
        await asyncio.gather(
            *(agent.stop(grace_s=grace) for agent in self._agents), return_exceptions=True
        )
        for i, agent in enumerate(self._agents):
            if agent.error is not None:
                self._problems.append(f"node {i + 1} stopped: {agent.error}")

    # --- sessions ---------------------------------------------------------------------------

    def _rate_cap(self) -> float | None:
        """Per-session submits/s: the asked ``rate``, held under every peer's frame budget.

        A session sends one frame per submit; each node sends ``NODE_FRAMES_PER_JOB`` (+1 with
        progress) per job it runs, and the scheduler spreads jobs over the nodes.
        """
        config = self.config
        caps = [config.rate] if config.rate else []
        if config.frame_budget:
            caps.append(config.frame_budget)
            if self._agents:
                per_job = NODE_FRAMES_PER_JOB + (1 if config.progress else 0)
                node_jobs_per_s = len(self._agents) * config.frame_budget / per_job
                caps.append(node_jobs_per_s / len(self._clients))
        return min(caps) if caps else None

    def _take_ticket(self) -> bool:
        if self._stopping.is_set():
            return False
        if self._remaining is None:
            return True
        if self._remaining <= 0:
            return False
        self._remaining -= 1
        return True

    async def _session_loop(self, index: int) -> None:
        window = self._window[index] if self._window else None
        while index not in self._dead_sessions:
            if window is not None:
                await window.acquire()
            await self._pacers[index].wait()
            if index in self._dead_sessions or not self._take_ticket():
                if window is not None:
                    window.release()
                return
            self._spawn(self._submit(index, window))
            await asyncio.sleep(0)  # unpaced and with free slots, still let the submits run

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("simulated submit crashed", exc_info=task.exception())
            self._problems.append(f"a simulated submit crashed: {task.exception()!r}")

    async def _submit(self, index: int, window: asyncio.Semaphore | None) -> None:
        rng = self._session_rngs[index]
        request = _Request(
            request_id=f"sim-{self._run_id}-{next(self._seq)}",
            session=index,
            service=rng.choice(self.config.services),
            submitted_at=time.monotonic(),
        )
        self._requests.append(request)
        self.live.submitted += 1
        if self._first_submit is None:
            self._first_submit = request.submitted_at
        try:
            reply = await self._send_submit(index, request)
            if reply is None:
                return
            if isinstance(reply, p.JobRejected):
                self._rejected[reply.code.value] += 1
                self.live.rejected += 1
                if window is not None:
                    # All slots taken (or marked unavailable): give one a moment to free up.
                    await asyncio.sleep(max(self.config.job_ms / 2000, 0.02))
                return
            request.job_id = reply.job_id
            self.live.accepted += 1
            self._expected[(index, reply.job_id)] = request.request_id
            if rng.random() < self.config.duplicate_rate:
                self._spawn(self._repeat(request, reply.job_id))
            self.live.in_flight += 1
            try:
                result = await self._await_result(index, reply.job_id)
            finally:
                self.live.in_flight -= 1
            if result is not None:
                self.live.results += 1
                self.live.ok += result.ok
        finally:
            if window is not None:
                window.release()

    async def _send_submit(
        self, index: int, request: _Request
    ) -> p.JobAccepted | p.JobRejected | None:
        """The reply to a submit of ``request`` from session ``index``; None if none came."""
        try:
            return await self._clients[index].submit(
                request.request_id,
                request.service,
                {"request_id": request.request_id},
                timeout_ms=self.config.job_timeout_ms,
                reply_timeout_s=self.config.reply_timeout_s,
            )
        except RequestFailed as exc:
            self._submit_errors[exc.error.code.value] += 1
        except TimeoutError:
            self._violation(
                "no_reply",
                f"request {request.request_id} (session {index + 1}) got neither job_accepted "
                f"nor job_rejected within {self.config.reply_timeout_s} s",
            )
        except SdkError as exc:
            self._dead_sessions.add(index)
            self._problem(f"session {index + 1} failed: {exc}")
        return None

    async def _repeat(self, original: _Request, job_id: str) -> None:
        """Submit ``original``'s request id again, later, from a random session."""
        rng = self._session_rngs[original.session]
        await asyncio.sleep(rng.uniform(0, 2 * self.config.job_ms / 1000))
        index = rng.randrange(len(self._clients))
        await self._pacers[index].wait()
        repeat = _Request(original.request_id, index, original.service, time.monotonic())
        self._duplicates_submitted += 1
        reply = await self._send_submit(index, repeat)
        if reply is None:
            return
        where = f"request {original.request_id} repeated by session {index + 1}"
        if isinstance(reply, p.JobRejected):
            self._dup_rejected[reply.code.value] += 1
            if reply.code not in TRANSIENT_REJECTIONS:
                self._violation(
                    "duplicate_rejected",
                    f"{where} was rejected with {reply.code.value} although job {job_id} holds it",
                )
            return
        self._expected[(index, reply.job_id)] = original.request_id
        if reply.job_id == job_id:
            self._duplicates_same_job += 1
        else:
            self._violation("duplicate_job", f"{where} got job {reply.job_id}, not {job_id}")
        await self._await_result(index, reply.job_id)

    async def _await_result(self, index: int, job_id: str) -> p.SessionJobResult | None:
        """The first result of ``job_id`` to session ``index``; None if none came in time."""
        key = (index, job_id)
        arrived = self._arrived.setdefault(key, asyncio.Event())
        limit = self.config.job_timeout_ms / 1000 + self.config.grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), limit)
        deliveries = self._deliveries.get(key)
        return deliveries[0].result if deliveries else None

    # --- what sessions receive --------------------------------------------------------------

    def _on_result(self, index: int, result: p.SessionJobResult) -> None:
        key = (index, result.job_id)
        deliveries = self._deliveries.setdefault(key, [])
        deliveries.append(_Delivery(time.monotonic(), result))
        self._arrived.setdefault(key, asyncio.Event()).set()
        echoed = (result.result or {}).get("request_id")
        # Only this simulator's handlers echo the request id; other nodes' results are skipped.
        if result.ok and echoed is not None and echoed != result.request_id:
            self._violation(
                "wrong_result",
                f"session {index + 1} got, for request {result.request_id} (job "
                f"{result.job_id}), the result of request {echoed}",
            )

    def _on_progress(self, progress: p.SessionJobProgress) -> None:
        self._progress_events += 1

    def _on_session_error(self, error: p.Error) -> None:
        self._session_errors[error.code.value] += 1

    # --- nodes ------------------------------------------------------------------------------

    def _agent(self, index: int, token: str, options: dict[str, Any]) -> NodeAgent:
        seed = self.config.seed
        rng = random.Random(None if seed is None else f"{seed}-node-{index}")
        handler = self._handler(index, rng)
        options.setdefault("rng", random.Random(None if seed is None else f"{seed}-agent-{index}"))
        options.setdefault("resources", _calm_load(rng))
        return NodeAgent(
            self.node_url,
            token,
            services=list(self.config.services),
            max_jobs=self.config.max_jobs,
            handlers=dict.fromkeys(self.config.services, handler),
            on_violation=lambda v: self._on_node_violation(index, v),
            **options,
        )

    def _handler(self, index: int, rng: random.Random) -> Callable[[Job], Any]:
        config = self.config

        async def handle(job: Job) -> dict[str, Any]:
            self._check_dispatch(index, job)
            if rng.random() < config.mna_rate:
                raise ModelNotAvailable(
                    f"simulated: {job.service.id} unavailable on node {index + 1}"
                )
            duration_s = self._duration_ms(rng) / 1000
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

    def _duration_ms(self, rng: random.Random) -> float:
        mean = self.config.job_ms
        kind = self.config.job_ms_distribution
        if kind == "uniform":
            return rng.uniform(mean / 2, mean * 1.5)
        if kind == "exponential" and mean > 0:
            return min(rng.expovariate(1 / mean), mean * EXPONENTIAL_CAP)
        return mean

    def _check_dispatch(self, index: int, job: Job) -> None:
        other = self._dispatched.setdefault((job.job_id, job.attempt), index)
        if other != index:
            self._violation(
                "double_dispatch",
                f"job {job.job_id} attempt {job.attempt} ran on node {other + 1} and node "
                f"{index + 1}",
            )

    def _on_node_violation(self, index: int, violation: Violation) -> None:
        self._violation(
            "max_jobs",
            f"node {index + 1} was assigned job {violation.job_id} (attempt "
            f"{violation.attempt}) while it held {violation.held} of max_jobs "
            f"{violation.max_jobs}",
        )

    # --- findings ---------------------------------------------------------------------------

    def _violation(self, kind: str, detail: str) -> None:
        logger.warning("simulation %s: %s: %s", self._run_id, kind, detail)
        self._violations.append(SimViolation(kind, detail))

    def _problem(self, text: str) -> None:
        if text not in self._problems:
            self._problems.append(text)

    def _summary(self, elapsed_s: float) -> Summary:
        aborted = self._aborting.is_set()
        missing = unfinished = duplicate_results = 0
        for key, request_id in self._expected.items():
            deliveries = self._deliveries.get(key, [])
            session, job_id = key
            if not deliveries:
                if aborted:
                    unfinished += 1
                    continue
                missing += 1
                self._violation(
                    "missing_result",
                    f"job {job_id} (request {request_id}) was accepted for session "
                    f"{session + 1} but no result came within its timeout plus "
                    f"{self.config.grace_s} s",
                )
            elif len(deliveries) > 1:
                duplicate_results += 1
                self._violation(
                    "duplicate_result",
                    f"job {job_id} (request {request_id}) was delivered "
                    f"{len(deliveries)} times to session {session + 1}",
                )
            wrong = {d.result.request_id for d in deliveries} - {request_id}
            if wrong:
                self._violation(
                    "wrong_result",
                    f"the result of job {job_id} came to session {session + 1} for request "
                    f"{', '.join(sorted(wrong))}, not {request_id}",
                )
        for (session, job_id), deliveries in self._deliveries.items():
            if (session, job_id) not in self._expected:
                self._violation(
                    "unexpected_result",
                    f"session {session + 1} got {len(deliveries)} result(s) for job {job_id}, "
                    "which it was never told it had submitted",
                )

        completed = 0
        failed: Counter[str] = Counter()
        latencies: list[float] = []
        last_result: float | None = None
        for request in self._requests:
            if request.job_id is None:
                continue
            delivered = self._deliveries.get((request.session, request.job_id))
            if not delivered:
                continue
            first = delivered[0]
            latencies.append((first.at - request.submitted_at) * 1000)
            last_result = first.at if last_result is None else max(last_result, first.at)
            if first.result.ok:
                completed += 1
            else:
                failed[first.result.error.code if first.result.error else "UNKNOWN"] += 1
        span = 0.0
        if self._first_submit is not None and last_result is not None:
            span = last_result - self._first_submit
        results = completed + sum(failed.values())
        return Summary(
            nodes=len(self._agents),
            sessions=len(self._clients),
            elapsed_s=elapsed_s,
            submit_rate_cap=self.submit_rate_cap,
            submitted=len(self._requests),
            accepted=sum(1 for r in self._requests if r.job_id is not None),
            rejected=dict(self._rejected),
            submit_errors=dict(self._submit_errors),
            duplicates_submitted=self._duplicates_submitted,
            duplicates_same_job=self._duplicates_same_job,
            duplicates_rejected=dict(self._dup_rejected),
            completed=completed,
            failed=dict(failed),
            missing=missing,
            unfinished=unfinished,
            duplicate_results=duplicate_results,
            progress_events=self._progress_events,
            throughput=results / span if span > 0 else 0.0,
            latency_p50_ms=percentile(latencies, 50),
            latency_p95_ms=percentile(latencies, 95),
            latency_p99_ms=percentile(latencies, 99),
            violations=tuple(self._violations),
            notes=tuple(self._notes()),
            problems=tuple(self._problems),
            node_reports=tuple(self._node_report(i, a) for i, a in enumerate(self._agents)),
            session_errors=dict(self._session_errors),
            aborted=aborted,
        )

    def _notes(self) -> list[str]:
        notes = []
        full = self._rejected.get(p.ErrorCode.NO_AVAILABLE_NODE.value, 0)
        if full and self._fits_slots and not self.config.mna_rate:
            notes.append(
                f"{full} submit(s) were rejected NO_AVAILABLE_NODE although this run never had "
                "more jobs in flight than its nodes have slots; PROTOCOL.md makes a slot freed "
                "by a result usable by the next submit at once (other load on the scheduler "
                "would also explain it)"
            )
        return notes

    @staticmethod
    def _node_report(index: int, agent: NodeAgent) -> NodeReport:
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


def _window_shares(slots: int, sessions: int, *, fallback: int) -> list[int]:
    """``slots`` split over ``sessions`` (at least 1 each); ``fallback`` each without slots of
    our own to size the window by (other nodes serve the jobs)."""
    if not slots:
        return [fallback] * sessions
    return [max(1, slots // sessions + (1 if i < slots % sessions else 0)) for i in range(sessions)]


def _calm_load(rng: random.Random) -> Callable[[], p.Resources]:
    """Made-up, moderate load: many agents share one machine, whose real load means nothing
    for any one of them and could push them over the scheduler's resource thresholds."""

    def probe() -> p.Resources:
        return p.Resources(cpu_pct=round(rng.uniform(5, 25), 1), mem_pct=30.0)

    return probe


def _codes(counts: Mapping[str, int]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) + ")"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
