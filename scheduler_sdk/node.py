"""Connect a worker machine to the scheduler as a node and run the jobs it is sent.

The agent keeps one WebSocket to ``/ws/node/`` and speaks PROTOCOL.md "Node ⇄ scheduler":

1. Connect, send ``node_register``, wait for ``node_registered`` (its ``heartbeat_interval_ms``
   sets the heartbeat period), then send what was waiting from an earlier connection.
2. Heartbeat every interval ±20 % with CPU and memory load and the ids of every job it holds.
3. For each ``job_assign``: ``job_ack`` at once; ``job_started`` when a slot is free and the
   handler starts; then ``job_result`` or ``model_not_available``. At most ``max_jobs`` handlers
   run at once; an assignment beyond that (which the scheduler promises never to send) is
   queued, acked, and recorded as a ``Violation``.
4. ``job_cancel`` cancels the handler and nothing more is sent about that job.
5. Close 4401 (bad token) and 4409 (replaced) stop the agent with ``Unauthorized`` / ``Replaced``.
   Any other drop, including 1012 (instance stopping), reconnects with capped exponential
   backoff and jitter, and registers again. Handlers keep running across the gap; their
   ``job_result`` waits and is sent on the next connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import psutil
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.backoff import Backoff
from scheduler_sdk.errors import Replaced, SdkError, Unauthorized
from scheduler_sdk.reconnect import stay_connected
from scheduler_sdk.version import __version__

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
Handler = Callable[["Job"], Awaitable[JsonObject]]
HandlerT = TypeVar("HandlerT", bound=Handler)
ResourceProbe = Callable[[], p.Resources]

HEARTBEAT_JITTER = 0.2
RESULT_RESEND_WINDOW_S = 10.0
# The backlog sent after a reconnect (queued replies, resent results) stays under the scheduler's
# default frame limit (PROTOCOL.md: 50 frames/s, burst 100): a burst, then a steady rate. Sent all
# at once, its tail would be refused with RATE_LIMITED and those results lost.
BACKLOG_BURST = 50
BACKLOG_FRAMES_PER_S = 40.0
MAX_ERROR_MESSAGE_CHARS = 500
DEFAULT_MAX_FRAME_BYTES = 1 << 20

# Codes this SDK puts in job_result.error when the handler did not supply one.
HANDLER_CRASHED = "INTERNAL_ERROR"
BAD_RESULT = "BAD_RESULT"
RESULT_TOO_LARGE = "RESULT_TOO_LARGE"


class JobFailed(Exception):
    """Raise from a handler to end the job with ``job_result{ok:false, error:{code, message}}``.

    ``code`` is the node's own, stable, SCREAMING_SNAKE code (``BAD_AUDIO``); the session sees it.
    """

    def __init__(self, code: str, message: str = "") -> None:
        if not code:
            raise ValueError("JobFailed needs a code")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ModelNotAvailable(Exception):
    """Raise from a handler when this node cannot serve the job's service now.

    The agent sends ``model_not_available`` instead of a result: the scheduler marks the node
    unavailable for the service for a while and gives the job to another node.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Violation:
    """The scheduler assigned a job while the node already held ``max_jobs`` of them."""

    job_id: str
    attempt: int
    held: int
    max_jobs: int


@dataclass
class NodeStats:
    """Counters since the agent was made; a simulator reads them to check the scheduler."""

    registrations: int = 0
    jobs_assigned: int = 0
    duplicate_assigns: int = 0
    jobs_started: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    jobs_unavailable: int = 0
    jobs_cancelled: int = 0
    jobs_expired: int = 0
    running: int = 0
    max_running_seen: int = 0
    max_held_seen: int = 0
    heartbeats_sent: int = 0
    progress_sent: int = 0
    progress_dropped: int = 0
    results_resent: int = 0
    errors_received: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    backoff_delays: list[float] = field(default_factory=list)

    @property
    def jobs_finished(self) -> int:
        """Jobs whose handler returned or raised (a result or model_not_available was due)."""
        return self.jobs_succeeded + self.jobs_failed + self.jobs_unavailable


class Job:
    """One assignment, as a handler sees it."""

    __slots__ = (
        "_agent",
        "_last_progress",
        "attempt",
        "deadline_ms",
        "features",
        "job_id",
        "payload",
        "service",
    )

    def __init__(self, assign: p.JobAssign, agent: NodeAgent) -> None:
        self.job_id = assign.job_id
        self.attempt = assign.attempt
        self.service = assign.service
        self.features = tuple(assign.features)
        self.payload = assign.payload
        self.deadline_ms = assign.deadline_ms
        self._agent = agent
        self._last_progress = float("-inf")

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, attempt={self.attempt}, service={self.service.id!r})"

    @property
    def remaining_s(self) -> float:
        """Seconds until the scheduler's deadline, by this machine's clock."""
        return self.deadline_ms / 1000 - time.time()

    async def progress(self, progress: float, data: JsonObject | None = None) -> bool:
        """Report progress 0..1 (and optional data) to the session; True if it was sent.

        Progress is best effort: it is dropped while disconnected and when reported more often
        than the agent's ``progress_interval_s`` (except ``1.0``), so a chatty handler cannot
        push the connection over the scheduler's frame rate limit.
        """
        if not 0 <= progress <= 1:
            raise ValueError(f"progress must be within 0..1, not {progress!r}")
        return await self._agent._job_progress(self, progress, data)


class _Outgoing(NamedTuple):
    job_id: str | None
    raw: str
    is_result: bool


@dataclass(eq=False)
class _Held:
    """A job the node holds: acked and not yet finished, cancelled or expired."""

    job: Job
    task: asyncio.Task[None] | None = None


class NodeAgent:
    """A node: registers with the scheduler and runs the jobs it is assigned.

    ``services`` are the service ids (or ``ServiceRef`` with a version) to advertise; each needs
    a handler, given in ``handlers`` or with ``@agent.handler(service_id)``. A handler is
    ``async def handler(job: Job) -> dict`` and may raise ``JobFailed`` or ``ModelNotAvailable``.
    ``resources`` replaces the psutil probe (a simulator reports made-up load with it);
    ``gpu_pct`` adds a GPU figure to the default probe. ``on_violation`` is called (and must not
    block) when the scheduler assigns more than ``max_jobs`` at once.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        services: Iterable[str | p.ServiceRef],
        features: Iterable[str] = (),
        max_jobs: int = 1,
        region: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        version: str = f"scheduler-sdk/{__version__}",
        resources: ResourceProbe | None = None,
        gpu_pct: Callable[[], float | None] | None = None,
        on_violation: Callable[[Violation], None] | None = None,
        backoff: Backoff | None = None,
        register_timeout_s: float = 10.0,
        deadline_grace_s: float | None = 30.0,
        progress_interval_s: float = 0.1,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        connect_kwargs: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.url = url
        self._token = token
        self.services = [s if isinstance(s, p.ServiceRef) else p.ServiceRef(id=s) for s in services]
        self.features = list(features)
        self.max_jobs = max_jobs
        self.region = region
        self.version = version
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._probe = resources
        self._gpu_pct = gpu_pct
        self._on_violation = on_violation
        self._backoff = backoff or Backoff()
        self._register_timeout_s = register_timeout_s
        self._deadline_grace_s = deadline_grace_s
        self._progress_interval_s = progress_interval_s
        self._max_frame_bytes = max_frame_bytes
        self._connect_kwargs: dict[str, Any] = {"compression": None, **(connect_kwargs or {})}
        self._rng = rng or random.Random()

        self.stats = NodeStats()
        self.node_id: str | None = None
        self.instance_id: str | None = None
        self.heartbeat_interval_ms: int | None = None
        self._jobs: dict[str, _Held] = {}
        self._slots = asyncio.Semaphore(max_jobs)
        # Frames that must reach the scheduler, queued while disconnected.
        self._outbox: deque[_Outgoing] = deque()
        # Results sent lately: they may have died in the socket buffer of a dropped connection,
        # and PROTOCOL.md makes a repeated job_result harmless, so they are sent again.
        self._recent_results: deque[tuple[float, str, str]] = deque()
        self._ws: ClientConnection | None = None  # set while registered
        self._live_ws: ClientConnection | None = None  # set while connected at all
        self._registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._draining = False
        self._running = False
        self._run_task: asyncio.Task[None] | None = None
        self._last_refusal = ""
        self.error: BaseException | None = None
        """Why ``run()`` ended, if it ended with an error (``Unauthorized``, ``Replaced``)."""
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    # --- configuration ----------------------------------------------------------------------

    def handler(self, service_id: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator: ``@agent.handler("asr")`` registers the handler of a service."""

        def register(handler: HandlerT) -> HandlerT:
            self.add_handler(service_id, handler)
            return handler

        return register

    def add_handler(self, service_id: str, handler: Handler) -> None:
        self._handlers[service_id] = handler

    # --- life cycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Registered on a live connection."""
        return self._ws is not None

    @property
    def held_job_ids(self) -> list[str]:
        """Jobs acked and not yet finished: queued or running (what heartbeats report)."""
        return list(self._jobs)

    async def run(self) -> None:
        """Stay connected until ``stop()``; raise ``Unauthorized`` (4401) or ``Replaced`` (4409)."""
        if self._running or self._stop.is_set():
            raise RuntimeError("an agent runs once; make a new one")
        missing = sorted({s.id for s in self.services} - set(self._handlers))
        if missing:
            raise ValueError(f"no handler for advertised services: {', '.join(missing)}")
        self._running = True
        try:
            await stay_connected(
                self._connection,
                peer="node",
                url=self.url,
                ident=lambda: self.node_id,
                stop=self._stop,
                backoff=self._backoff,
                rng=self._rng,
                on_delay=self.stats.backoff_delays.append,
            )
        except SdkError as exc:
            self.error = exc
            raise
        finally:
            self._running = False
            self._abandon_jobs()

    async def start(self, *, timeout_s: float | None = 30.0) -> str:
        """Run in the background and return the ``node_id`` once registered."""
        self._run_task = asyncio.create_task(self.run(), name=f"node-agent {self.url}")
        self._run_task.add_done_callback(_report_end)
        registered = asyncio.create_task(self._registered.wait())
        done, _ = await asyncio.wait(
            {self._run_task, registered}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if registered not in done:
            registered.cancel()
            if self._run_task in done:
                self._run_task.result()  # raises Unauthorized, Replaced, ...
                raise RuntimeError("the agent stopped before it registered")
            raise TimeoutError(f"not registered with {self.url} within {timeout_s} s")
        assert self.node_id is not None
        return self.node_id

    async def wait_registered(self, timeout_s: float | None = None) -> str:
        """The ``node_id`` once registered on the current (or next) connection."""
        await asyncio.wait_for(self._registered.wait(), timeout_s)
        assert self.node_id is not None
        return self.node_id

    async def wait_stopped(self) -> None:
        """Until the agent started by ``start()`` stops; raises what ``run()`` raised."""
        if self._run_task is None:
            raise RuntimeError("the agent was not started with start()")
        await asyncio.shield(self._run_task)

    async def drain(self) -> None:
        """Ask the scheduler to send no new jobs (also after reconnecting); running ones finish."""
        self._draining = True
        await self._send(p.NodeDrain(), reliable=False)

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop: drain, give held jobs ``grace_s`` to finish, cancel the rest, close.

        Jobs cancelled here get no result: the scheduler fails them over to another node.
        """
        tasks = [held.task for held in self._jobs.values() if held.task is not None]
        if tasks and grace_s > 0:
            await self.drain()
            await asyncio.wait(tasks, timeout=grace_s)
        self._stop.set()
        self._abandon_jobs()
        ws = self._live_ws
        if ws is not None:
            await ws.close(1000, "node stopping")
        if self._run_task is not None:
            try:
                await self._run_task
            except Exception as exc:  # it already failed; stop() only reports it
                logger.info("node agent had stopped with %r", exc)

    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def report_model_not_available(self, service: str | p.ServiceRef, reason: str) -> None:
        """Tell the scheduler this node cannot serve ``service`` now, outside of any job."""
        ref = service if isinstance(service, p.ServiceRef) else p.ServiceRef(id=service)
        await self._send(p.ModelNotAvailable(service=ref, reason=reason))

    # --- one connection ---------------------------------------------------------------------

    async def _connection(self) -> bool:
        """One connection's life; True if it got as far as registering."""
        registered: p.NodeRegistered | None = None
        async with connect(self.url, **self._connect_kwargs) as ws:
            self._live_ws = ws
            if self._stop.is_set():  # stop() ran while this connection was being opened
                self._live_ws = None
                await ws.close(1000, "node stopping")
                return False
            try:
                await ws.send(p.dump(self._register_frame()))
                registered = await self._await_registered(ws)
                if registered is not None:
                    await self._serve(ws, registered)
            except ConnectionClosed:
                pass
            finally:
                self._live_ws = None
        self._raise_if_fatal(ws)
        logger.info(
            "node %s disconnected (close %s %s)", self.node_id, ws.close_code, ws.close_reason
        )
        return registered is not None

    def _register_frame(self) -> p.NodeRegister:
        return p.NodeRegister(
            token=self._token,
            version=self.version,
            services=self.services,
            features=self.features,
            max_jobs=self.max_jobs,
            resources=self._resources(),
            region=self.region,
        )

    async def _await_registered(self, ws: ClientConnection) -> p.NodeRegistered | None:
        """The ``node_registered`` reply; None if the scheduler closed instead."""
        async with asyncio.timeout(self._register_timeout_s):
            while True:
                frame = self._parse(await ws.recv())
                if isinstance(frame, p.NodeRegistered):
                    return frame
                if isinstance(frame, p.Error):
                    # UNAUTHORIZED comes with close 4401, which _raise_if_fatal reports.
                    logger.warning("node registration refused: %s %s", frame.code, frame.message)
                    self._last_refusal = frame.message
                elif frame is not None:
                    logger.warning("node ignored %r before node_registered", frame)

    async def _serve(self, ws: ClientConnection, registered: p.NodeRegistered) -> None:
        self.node_id = registered.node_id
        self.instance_id = registered.instance_id
        self.heartbeat_interval_ms = registered.heartbeat_interval_ms
        self.stats.registrations += 1
        logger.info(
            "node %s registered on instance %s (heartbeat %d ms)",
            registered.node_id,
            registered.instance_id,
            registered.heartbeat_interval_ms,
        )
        # Nothing else may send on ws until the backlog is out, so that order is kept; frames
        # queued meanwhile land in the outbox and go out in this same loop.
        sent = 0
        while self._outbox:
            if sent >= BACKLOG_BURST:
                await asyncio.sleep(1.0 / BACKLOG_FRAMES_PER_S)
            sent += 1
            job_id, raw, is_result = self._outbox[0]
            await ws.send(raw)
            self._outbox.popleft()
            if is_result and job_id is not None:
                self._remember_result(job_id, raw)
        self._ws = ws
        self._registered.set()
        heartbeats = asyncio.create_task(self._heartbeats(registered.heartbeat_interval_ms))
        try:
            if self._draining:
                await ws.send(p.dump(p.NodeDrain()))
            async for message in ws:
                await self._on_frame(message)
        finally:
            self._ws = None
            self._registered.clear()
            heartbeats.cancel()
            self._requeue_recent_results()

    def _raise_if_fatal(self, ws: ClientConnection) -> None:
        code, reason = ws.close_code, ws.close_reason
        if code == p.CloseCode.UNAUTHORIZED:
            detail = reason or self._last_refusal or "bad or disabled node token"
            raise Unauthorized(f"the scheduler refused this node token (close 4401): {detail}")
        if code == p.CloseCode.REPLACED:
            raise Replaced(
                f"node {self.node_id} was replaced by a newer connection with its token "
                "(close 4409)"
            )

    def _parse(self, raw: str | bytes) -> p.Frame | None:
        try:
            return p.parse_outbound(raw, peer="node")
        except p.ProtocolError as exc:
            logger.warning("node ignored a bad frame from the scheduler: %s", exc.message)
            return None

    async def _on_frame(self, raw: str | bytes) -> None:
        frame = self._parse(raw)
        if isinstance(frame, p.JobAssign):
            await self._on_assign(frame)
        elif isinstance(frame, p.NodeJobCancel):
            self._on_cancel(frame)
        elif isinstance(frame, p.Error):
            self.stats.errors_received[frame.code] += 1
            ref = frame.ref.model_dump(exclude_none=True) if frame.ref else {}
            logger.warning(
                "node %s got error %s: %s %s", self.node_id, frame.code, frame.message, ref
            )

    # --- jobs -------------------------------------------------------------------------------

    async def _on_assign(self, assign: p.JobAssign) -> None:
        current = self._jobs.get(assign.job_id)
        if current is not None:
            if current.job.attempt == assign.attempt:
                # A re-sent assignment: confirm again, but never run a job twice.
                self.stats.duplicate_assigns += 1
                await self._send(p.JobAck(job_id=assign.job_id, attempt=assign.attempt))
                return
            if current.job.attempt > assign.attempt:
                logger.warning(
                    "node ignored stale job %s attempt %d", assign.job_id, assign.attempt
                )
                return
            # The job came back with a new attempt; the old one's replies would be stale.
            self._forget(assign.job_id, cancel=True)
        if assign.service.id not in self._handlers:
            await self._send(
                p.ModelNotAvailable(
                    job_id=assign.job_id,
                    attempt=assign.attempt,
                    service=assign.service,
                    reason=f"no handler for service {assign.service.id!r} on this node",
                )
            )
            return
        self.stats.jobs_assigned += 1
        if len(self._jobs) >= self.max_jobs:
            self._violation(assign)
        held = _Held(Job(assign, self))
        self._jobs[assign.job_id] = held
        self.stats.max_held_seen = max(self.stats.max_held_seen, len(self._jobs))
        held.task = asyncio.create_task(self._run_job(held), name=f"job {assign.job_id}")
        held.task.add_done_callback(_log_crash)
        await self._send(
            p.JobAck(job_id=assign.job_id, attempt=assign.attempt), job_id=assign.job_id
        )

    def _violation(self, assign: p.JobAssign) -> None:
        violation = Violation(assign.job_id, assign.attempt, len(self._jobs), self.max_jobs)
        self.stats.violations.append(violation)
        logger.warning(
            "job %s assigned to node %s while it held %d of max_jobs %d; queued",
            assign.job_id,
            self.node_id,
            violation.held,
            violation.max_jobs,
        )
        if self._on_violation is not None:
            try:
                self._on_violation(violation)
            except Exception:
                logger.exception("on_violation hook failed")

    def _on_cancel(self, cancel: p.NodeJobCancel) -> None:
        held = self._jobs.get(cancel.job_id)
        if held is None or held.job.attempt != cancel.attempt:
            logger.info("node has no job %s attempt %d to cancel", cancel.job_id, cancel.attempt)
            return
        logger.info("job %s cancelled on node %s (%s)", cancel.job_id, self.node_id, cancel.reason)
        self.stats.jobs_cancelled += 1
        self._forget(cancel.job_id, cancel=True)

    def _forget(self, job_id: str, *, cancel: bool) -> None:
        """Drop a job from the node's books, and everything still unsent about it."""
        held = self._jobs.pop(job_id, None)
        if cancel and held is not None and held.task is not None:
            held.task.cancel()
        self._outbox = deque(item for item in self._outbox if item.job_id != job_id)
        self._recent_results = deque(item for item in self._recent_results if item[1] != job_id)

    def _abandon_jobs(self) -> None:
        for job_id in list(self._jobs):
            self._forget(job_id, cancel=True)
        self._outbox.clear()
        self._recent_results.clear()

    def _is_current(self, held: _Held) -> bool:
        return self._jobs.get(held.job.job_id) is held

    async def _run_job(self, held: _Held) -> None:
        """Wait for a slot, run the handler, send the outcome; silent if cancelled meanwhile.

        The local deadline (the job's ``deadline_ms`` plus ``deadline_grace_s``) only matters
        when the scheduler's ``job_cancel{JOB_TIMEOUT}`` was lost with a connection: it keeps a
        forgotten job from holding a slot forever.
        """
        job = held.job
        when: float | None = None
        if self._deadline_grace_s is not None:
            budget = job.remaining_s + self._deadline_grace_s
            when = asyncio.get_running_loop().time() + max(budget, 0.0)
        try:
            async with asyncio.timeout_at(when) as deadline, self._slots:
                if not self._is_current(held):
                    return
                self.stats.running += 1
                self.stats.max_running_seen = max(self.stats.max_running_seen, self.stats.running)
                try:
                    self.stats.jobs_started += 1
                    started = p.JobStarted(job_id=job.job_id, attempt=job.attempt)
                    await self._send(started, job.job_id)
                    outcome, is_result = await self._outcome(job)
                finally:
                    self.stats.running -= 1
        except TimeoutError:
            if not deadline.expired():
                raise
            if self._is_current(held):
                logger.warning(
                    "job %s passed its deadline on node %s; dropped", job.job_id, self.node_id
                )
                self.stats.jobs_expired += 1
                self._forget(job.job_id, cancel=False)
            return
        if not self._is_current(held):
            return  # cancelled while finishing: nothing more is sent about it
        # Off the books before the result leaves, so the next assignment (which the result
        # frees a slot for) never looks like one too many.
        self._forget(job.job_id, cancel=False)
        await self._send_raw(outcome, job_id=job.job_id, reliable=True, is_result=is_result)

    async def _outcome(self, job: Job) -> tuple[str, bool]:
        """The final frame for ``job``, serialized, and whether it is a ``job_result``."""
        raw = await self._result(job)
        return (raw, True) if isinstance(raw, str) else (p.dump(raw), False)

    async def _result(self, job: Job) -> str | p.ModelNotAvailable:
        """The serialized ``job_result`` for ``job``, or the model_not_available to send."""
        handler = self._handlers[job.service.id]
        try:
            result = await handler(job)
        except JobFailed as exc:
            self.stats.jobs_failed += 1
            return self._failure(job, exc.code, exc.message)
        except ModelNotAvailable as exc:
            self.stats.jobs_unavailable += 1
            return p.ModelNotAvailable(
                job_id=job.job_id, attempt=job.attempt, service=job.service, reason=exc.reason
            )
        except Exception as exc:
            logger.exception("handler of job %s (%s) crashed", job.job_id, job.service.id)
            self.stats.jobs_failed += 1
            return self._failure(job, HANDLER_CRASHED, f"{type(exc).__name__}: {exc}")
        if not isinstance(result, dict):
            self.stats.jobs_failed += 1
            return self._failure(job, BAD_RESULT, f"handler returned {type(result).__name__}")
        try:
            raw = p.dump(
                p.NodeJobResult(job_id=job.job_id, attempt=job.attempt, ok=True, result=result)
            )
        except (ValidationError, PydanticSerializationError) as exc:
            self.stats.jobs_failed += 1
            return self._failure(job, BAD_RESULT, f"result is not a JSON object: {exc}")
        if len(raw.encode()) > self._max_frame_bytes:
            self.stats.jobs_failed += 1
            return self._failure(
                job, RESULT_TOO_LARGE, f"result is over {self._max_frame_bytes} bytes"
            )
        self.stats.jobs_succeeded += 1
        return raw

    def _failure(self, job: Job, code: str, message: str) -> str:
        error = p.JobError(code=code, message=message[:MAX_ERROR_MESSAGE_CHARS])
        return p.dump(
            p.NodeJobResult(job_id=job.job_id, attempt=job.attempt, ok=False, error=error)
        )

    async def _job_progress(self, job: Job, progress: float, data: JsonObject | None) -> bool:
        held = self._jobs.get(job.job_id)
        if held is None or held.job is not job:
            return False  # cancelled or finished: nothing more about it
        now = time.monotonic()
        if progress < 1 and now - job._last_progress < self._progress_interval_s:
            self.stats.progress_dropped += 1
            return False
        job._last_progress = now
        frame = p.NodeJobProgress(
            job_id=job.job_id, attempt=job.attempt, progress=progress, data=data
        )
        sent = await self._send(frame, reliable=False)
        if sent:
            self.stats.progress_sent += 1
        else:
            self.stats.progress_dropped += 1
        return sent

    # --- heartbeats and load ----------------------------------------------------------------

    async def _heartbeats(self, interval_ms: int) -> None:
        interval_s = interval_ms / 1000
        if self._jobs:
            # Back after a gap with jobs still held: renew their reservations at once.
            await self._heartbeat()
        while True:
            await asyncio.sleep(
                interval_s * self._rng.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
            )
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        try:
            frame = p.NodeHeartbeat(resources=self._resources(), running=list(self._jobs))
        except ValidationError:
            logger.exception("resource probe gave bad figures; reporting psutil figures")
            frame = p.NodeHeartbeat(resources=self._psutil_resources(), running=list(self._jobs))
        if await self._send(frame, reliable=False):
            self.stats.heartbeats_sent += 1

    def _resources(self) -> p.Resources:
        if self._probe is not None:
            try:
                return self._probe()
            except Exception:
                logger.exception("resource probe failed; reporting psutil figures")
        return self._psutil_resources()

    def _psutil_resources(self) -> p.Resources:
        gpu = None
        if self._gpu_pct is not None:
            try:
                gpu = self._gpu_pct()
            except Exception:
                logger.exception("GPU probe failed; gpu_pct left out")
        return p.Resources(
            cpu_pct=_percent(psutil.cpu_percent(interval=None)),
            mem_pct=_percent(psutil.virtual_memory().percent),
            gpu_pct=None if gpu is None else _percent(gpu),
        )

    # --- sending ----------------------------------------------------------------------------

    async def _send(
        self, frame: p.Frame, job_id: str | None = None, *, reliable: bool = True
    ) -> bool:
        return await self._send_raw(p.dump(frame), job_id=job_id, reliable=reliable)

    async def _send_raw(
        self, raw: str, *, job_id: str | None, reliable: bool, is_result: bool = False
    ) -> bool:
        """Send now if registered; else queue ``reliable`` frames for the next connection."""
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(raw)
            except ConnectionClosed:
                pass
            else:
                if is_result and job_id is not None:
                    self._remember_result(job_id, raw)
                return True
        if reliable:
            self._outbox.append(_Outgoing(job_id, raw, is_result))
        return False

    def _remember_result(self, job_id: str, raw: str) -> None:
        now = time.monotonic()
        self._recent_results.append((now, job_id, raw))
        while self._recent_results and now - self._recent_results[0][0] > RESULT_RESEND_WINDOW_S:
            self._recent_results.popleft()

    def _requeue_recent_results(self) -> None:
        cutoff = time.monotonic() - RESULT_RESEND_WINDOW_S
        resend = [
            _Outgoing(job_id, raw, True) for at, job_id, raw in self._recent_results if at >= cutoff
        ]
        self._recent_results.clear()
        self.stats.results_resent += len(resend)
        self._outbox.extendleft(reversed(resend))


def _percent(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("node agent stopped: %s", task.exception())


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("job task %s crashed", task.get_name(), exc_info=task.exception())
