"""The sessions' traffic: what each session submits, when, and which requests it repeats.

1. Each session runs a loop: wait for room in its window (closed loop, ``rate`` 0: its share of
   all nodes' slots) and for its pacer (``rate``, capped so no peer passes ``frame_budget``),
   take a ticket (``jobs`` left), and submit in a task of its own.
2. A submit waits for its reply and then for its result; a ``duplicate_rate`` share of the
   accepted ones is repeated later, under the same request id, from a random session.
3. Everything sent and answered goes into the ``Ledger``, which checks it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import protocol as p
from scheduler_sdk.errors import RequestFailed, SdkError
from scheduler_sdk.session import SessionClient
from scheduler_sdk.simulator.config import SimConfig
from scheduler_sdk.simulator.ledger import Ledger, Request

logger = logging.getLogger(__name__)

# Frames a node sends per job it runs: job_ack, job_started, job_result (job_progress is extra).
NODE_FRAMES_PER_JOB = 3


@dataclass
class LiveCounts:
    """Counters the progress line reads while the run goes on."""

    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    in_flight: int = 0
    results: int = 0
    ok: int = 0


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


class Traffic:
    """The submits of ``clients`` (session ``i`` is ``clients[i]``) towards ``nodes`` nodes
    of ``config.max_jobs`` slots each; request ids start ``sim-<run_id>-``."""

    def __init__(
        self,
        config: SimConfig,
        clients: Sequence[SessionClient],
        ledger: Ledger,
        *,
        nodes: int,
        run_id: str,
    ) -> None:
        self._config = config
        self._clients = clients
        self._ledger = ledger
        self._run_id = run_id
        self._seq = itertools.count(1)
        seed = config.seed
        self._session_rngs = [
            random.Random(None if seed is None else f"{seed}-submit-{i}")
            for i in range(len(clients))
        ]
        self.live = LiveCounts()
        self.rate_cap = _rate_cap(config, nodes=nodes, sessions=len(clients))
        """Per-session submits/s (``None``: unpaced)."""
        self._pacers = [_Pacer(self.rate_cap) for _ in clients]
        # Closed loop (rate 0): each session keeps its share of all slots in flight.
        self._window: list[asyncio.Semaphore] | None = None
        self.fits_slots = False
        """Closed loop with no more jobs in flight than our nodes have slots."""
        if config.rate == 0:
            slots = nodes * config.max_jobs
            shares = _window_shares(slots, len(clients), fallback=config.max_jobs)
            self._window = [asyncio.Semaphore(share) for share in shares]
            self.fits_slots = bool(slots) and sum(shares) <= slots
        self._remaining = config.jobs
        self.not_before: float | None = None
        """A ``time.monotonic()`` before which ``duration_s`` does not end submitting (set
        while a fault runs, so that the run sees the recovery after it)."""
        self._stopping = asyncio.Event()
        self._dead_sessions: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Submit no more."""
        self._stopping.set()

    def cancel(self) -> None:
        """Stop waiting for outstanding submits and results."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel outstanding submits and wait until they are gone."""
        self.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def outstanding(self) -> set[asyncio.Task[None]]:
        """Submits and repeats still waiting for a reply or a result."""
        return set(self._tasks)

    async def submit(self) -> None:
        """Run the sessions' loops until ``jobs`` submits, ``duration_s`` or ``stop()``."""
        loops = [asyncio.create_task(self._session_loop(i)) for i in range(len(self._clients))]
        stopping = asyncio.create_task(self._stopping.wait())
        waits: set[asyncio.Task[Any]] = {*loops, stopping}
        timeout = self._config.duration_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(loop.done() for loop in loops):
            until = None if deadline is None else max(deadline, self.not_before or 0.0)
            left = None if until is None else max(until - time.monotonic(), 0.0)
            if left is not None and self.not_before is not None:
                left = min(left, 0.5)  # a fault may move not_before while this waits
            done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                break
            if until is not None and time.monotonic() >= max(until, self.not_before or 0.0):
                break
            waits -= done
        for loop in loops:
            loop.cancel()
        stopping.cancel()
        await asyncio.gather(*loops, stopping, return_exceptions=True)
        self._stopping.set()

    # --- one session ------------------------------------------------------------------------

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("simulated submit crashed", exc_info=task.exception())
            self._ledger.problem(f"a simulated submit crashed: {task.exception()!r}")

    async def _submit(self, index: int, window: asyncio.Semaphore | None) -> None:
        rng = self._session_rngs[index]
        request = Request(
            request_id=f"sim-{self._run_id}-{next(self._seq)}",
            session=index,
            service=rng.choice(self._config.services),
            submitted_at=time.monotonic(),
        )
        self._ledger.submitted(request)
        self.live.submitted += 1
        try:
            reply = await self._send_submit(request)
            if reply is None:
                return
            if isinstance(reply, p.JobRejected):
                self._ledger.rejected(reply)
                self.live.rejected += 1
                if window is not None:
                    # All slots taken (or marked unavailable): give one a moment to free up.
                    await asyncio.sleep(max(self._config.job_ms / 2000, 0.02))
                return
            self._ledger.accepted(request, reply.job_id)
            self.live.accepted += 1
            if rng.random() < self._config.duplicate_rate:
                self._spawn(self._repeat(request, reply.job_id))
            self.live.in_flight += 1
            try:
                result = await self._ledger.await_result(index, reply.job_id)
            finally:
                self.live.in_flight -= 1
            if result is not None:
                self.live.results += 1
                self.live.ok += result.ok
        finally:
            if window is not None:
                window.release()

    async def _send_submit(self, request: Request) -> p.JobAccepted | p.JobRejected | None:
        """The reply to a submit of ``request`` from its session; None if none came."""
        index = request.session
        try:
            return await self._clients[index].submit(
                request.request_id,
                request.service,
                {"request_id": request.request_id},
                timeout_ms=self._config.job_timeout_ms,
                reply_timeout_s=self._config.reply_timeout_s,
            )
        except RequestFailed as exc:
            self._ledger.submit_failed(exc.error)
        except TimeoutError:
            self._ledger.unanswered(request)
        except SdkError as exc:
            self._dead_sessions.add(index)
            self._ledger.problem(f"session {index + 1} failed: {exc}", once=True)
        return None

    async def _repeat(self, original: Request, job_id: str) -> None:
        """Submit ``original``'s request id again, later, from a random session."""
        rng = self._session_rngs[original.session]
        await asyncio.sleep(rng.uniform(0, 2 * self._config.job_ms / 1000))
        index = rng.randrange(len(self._clients))
        await self._pacers[index].wait()
        repeat = Request(original.request_id, index, original.service, time.monotonic())
        self._ledger.repeat_submitted()
        reply = await self._send_submit(repeat)
        if reply is None:
            return
        accepted_as = self._ledger.repeat_answered(repeat, reply, job_id)
        if accepted_as is not None:
            await self._ledger.await_result(index, accepted_as)


def _rate_cap(config: SimConfig, *, nodes: int, sessions: int) -> float | None:
    """Per-session submits/s: the asked ``rate``, held under every peer's frame budget.

    A session sends one frame per submit; each node sends ``NODE_FRAMES_PER_JOB`` (+1 with
    progress) per job it runs, and the scheduler spreads jobs over the nodes.
    """
    caps = [config.rate] if config.rate else []
    if config.frame_budget:
        caps.append(config.frame_budget)
        if nodes:
            per_job = NODE_FRAMES_PER_JOB + (1 if config.progress else 0)
            node_jobs_per_s = nodes * config.frame_budget / per_job
            caps.append(node_jobs_per_s / sessions)
    return min(caps) if caps else None


def _window_shares(slots: int, sessions: int, *, fallback: int) -> list[int]:
    """``slots`` split over ``sessions`` (at least 1 each); ``fallback`` each without slots of
    our own to size the window by (other nodes serve the jobs)."""
    if not slots:
        return [fallback] * sessions
    return [max(1, slots // sessions + (1 if i < slots % sessions else 0)) for i in range(sessions)]
