"""The jobs a node holds, from their ``job_assign`` until nothing more is to be sent about them.

1. An assignment is fenced by its attempt: the same attempt again is acked again but never run
   twice, an older one is ignored, a newer one replaces the job (its handler is cancelled).
2. Each held job gets a task that waits for one of ``max_jobs`` slots, sends ``job_started``,
   runs the handler and hands its outcome to the outbox. An assignment beyond ``max_jobs``
   (which the scheduler promises never to send) waits for a slot and is recorded as a
   ``Violation``.
3. A job leaves the table when its outcome is sent, its ``job_cancel`` arrives, or its local
   deadline passes; whatever is still unsent about it leaves the outbox with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import protocol as p
from scheduler_sdk.node.job import Handler, Job, JsonObject
from scheduler_sdk.node.outbox import Outbox
from scheduler_sdk.node.outcome import run_handler
from scheduler_sdk.node.stats import NodeStats, Violation

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Held:
    """A job the node holds: acked and not yet finished, cancelled or expired."""

    job: Job
    task: asyncio.Task[None] | None = None
    last_progress: float = float("-inf")


class JobTable:
    """The held jobs of one agent, its handlers (by service id) and its ``max_jobs`` slots.

    ``deadline_grace_s`` past a job's ``deadline_ms`` the job is dropped (``None``: never);
    ``progress_interval_s`` is the least time between two progress reports of one job.
    ``node_id()`` names the node in the log.
    """

    def __init__(
        self,
        *,
        handlers: dict[str, Handler],
        max_jobs: int,
        outbox: Outbox,
        stats: NodeStats,
        on_violation: Callable[[Violation], None] | None,
        deadline_grace_s: float | None,
        progress_interval_s: float,
        max_frame_bytes: int,
        node_id: Callable[[], str | None],
    ) -> None:
        self.handlers = handlers
        self._max_jobs = max_jobs
        self._outbox = outbox
        self._stats = stats
        self._on_violation = on_violation
        self._deadline_grace_s = deadline_grace_s
        self._progress_interval_s = progress_interval_s
        self._max_frame_bytes = max_frame_bytes
        self._node_id = node_id
        self._jobs: dict[str, _Held] = {}
        self._slots = asyncio.Semaphore(max_jobs)

    @property
    def ids(self) -> list[str]:
        """Jobs acked and not yet finished: queued or running."""
        return list(self._jobs)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [held.task for held in self._jobs.values() if held.task is not None]

    async def assign(self, assign: p.JobAssign) -> None:
        current = self._jobs.get(assign.job_id)
        if current is not None:
            if current.job.attempt == assign.attempt:
                # A re-sent assignment: confirm again, but never run a job twice.
                self._stats.duplicate_assigns += 1
                await self._outbox.send(p.JobAck(job_id=assign.job_id, attempt=assign.attempt))
                return
            if current.job.attempt > assign.attempt:
                logger.warning(
                    "node ignored stale job %s attempt %d", assign.job_id, assign.attempt
                )
                return
            # The job came back with a new attempt; the old one's replies would be stale.
            self._forget(assign.job_id, cancel=True)
        if assign.service.id not in self.handlers:
            await self._outbox.send(
                p.ModelNotAvailable(
                    job_id=assign.job_id,
                    attempt=assign.attempt,
                    service=assign.service,
                    reason=f"no handler for service {assign.service.id!r} on this node",
                )
            )
            return
        self._stats.jobs_assigned += 1
        if len(self._jobs) >= self._max_jobs:
            self._violation(assign)
        held = _Held(Job(assign, self._progress))
        self._jobs[assign.job_id] = held
        self._stats.max_held_seen = max(self._stats.max_held_seen, len(self._jobs))
        held.task = asyncio.create_task(self._run(held), name=f"job {assign.job_id}")
        held.task.add_done_callback(_log_crash)
        await self._outbox.send(
            p.JobAck(job_id=assign.job_id, attempt=assign.attempt), job_id=assign.job_id
        )

    def cancel(self, cancel: p.NodeJobCancel) -> None:
        held = self._jobs.get(cancel.job_id)
        if held is None or held.job.attempt != cancel.attempt:
            logger.info("node has no job %s attempt %d to cancel", cancel.job_id, cancel.attempt)
            return
        logger.info(
            "job %s cancelled on node %s (%s)", cancel.job_id, self._node_id(), cancel.reason
        )
        self._stats.jobs_cancelled += 1
        self._forget(cancel.job_id, cancel=True)

    def abandon(self) -> None:
        """Cancel every held job; none of them gets a result."""
        for job_id in list(self._jobs):
            self._forget(job_id, cancel=True)

    def _violation(self, assign: p.JobAssign) -> None:
        holding = tuple((held.job.job_id, held.job.attempt) for held in self._jobs.values())
        violation = Violation(
            assign.job_id, assign.attempt, len(self._jobs), self._max_jobs, holding
        )
        self._stats.violations.append(violation)
        logger.warning(
            "job %s assigned to node %s while it held %d of max_jobs %d; queued",
            assign.job_id,
            self._node_id(),
            violation.held,
            violation.max_jobs,
        )
        if self._on_violation is not None:
            try:
                self._on_violation(violation)
            except Exception:
                logger.exception("on_violation hook failed")

    def _forget(self, job_id: str, *, cancel: bool) -> None:
        """Drop a job from the node's books, and everything still unsent about it."""
        held = self._jobs.pop(job_id, None)
        if cancel and held is not None and held.task is not None:
            held.task.cancel()
        self._outbox.forget(job_id)

    def _is_current(self, held: _Held) -> bool:
        return self._jobs.get(held.job.job_id) is held

    async def _run(self, held: _Held) -> None:
        """Wait for a slot, run the handler, send the outcome; silent if cancelled meanwhile.

        The local deadline (the job's ``deadline_ms`` plus ``deadline_grace_s``) only matters
        when the scheduler's ``job_cancel{JOB_TIMEOUT}`` was lost with a connection: it keeps a
        forgotten job from holding a slot forever.
        """
        job = held.job
        stats = self._stats
        when: float | None = None
        if self._deadline_grace_s is not None:
            budget = job.remaining_s + self._deadline_grace_s
            when = asyncio.get_running_loop().time() + max(budget, 0.0)
        try:
            async with asyncio.timeout_at(when) as deadline, self._slots:
                if not self._is_current(held):
                    return
                stats.running += 1
                stats.max_running_seen = max(stats.max_running_seen, stats.running)
                try:
                    stats.jobs_started += 1
                    started = p.JobStarted(job_id=job.job_id, attempt=job.attempt)
                    await self._outbox.send(started, job.job_id)
                    outcome, is_result = await run_handler(
                        self.handlers[job.service.id],
                        job,
                        stats=stats,
                        max_frame_bytes=self._max_frame_bytes,
                    )
                finally:
                    stats.running -= 1
        except TimeoutError:
            if not deadline.expired():
                raise
            if self._is_current(held):
                logger.warning(
                    "job %s passed its deadline on node %s; dropped", job.job_id, self._node_id()
                )
                stats.jobs_expired += 1
                self._forget(job.job_id, cancel=False)
            return
        if not self._is_current(held):
            return  # cancelled while finishing: nothing more is sent about it
        # Off the books before the result leaves, so the next assignment (which the result
        # frees a slot for) never looks like one too many.
        self._forget(job.job_id, cancel=False)
        await self._outbox.send_raw(outcome, job_id=job.job_id, reliable=True, is_result=is_result)

    async def _progress(self, job: Job, progress: float, data: JsonObject | None) -> bool:
        held = self._jobs.get(job.job_id)
        if held is None or held.job is not job:
            return False  # cancelled or finished: nothing more about it
        now = time.monotonic()
        if progress < 1 and now - held.last_progress < self._progress_interval_s:
            self._stats.progress_dropped += 1
            return False
        held.last_progress = now
        frame = p.NodeJobProgress(
            job_id=job.job_id, attempt=job.attempt, progress=progress, data=data
        )
        sent = await self._outbox.send(frame, reliable=False)
        if sent:
            self._stats.progress_sent += 1
        else:
            self._stats.progress_dropped += 1
        return sent


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("job task %s crashed", task.get_name(), exc_info=task.exception())
