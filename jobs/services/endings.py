"""A job's end: the follow-ups of the one transition that ended it, and endings the scheduler
decides (a session's cancel, a timeout, a node lost for good)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from core.errors import JobNotFound
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import slots as hslots
from hotstate import timers as htimers
from hotstate.jobs import JobState, JobView
from jobs.history import history_record
from jobs.selectors import route_forget
from nodes.services import node_job_cancel
from nodes.snapshot import snapshot_get
from protocol import CANCEL_REASONS, ErrorCode, NodeJobCancel
from sessions.delivery import result_deliver_to

logger = logging.getLogger(__name__)

UNFINISHED = (JobState.CREATED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING)


async def job_ended(*, job_id: str, node_id: str | None, subscribers: Sequence[str]) -> None:
    """Follow-up of the one transition that ended the job: free the slot, deliver, record."""
    if node_id:
        released = await hslots.slot_release(node_id=node_id, job_id=job_id)
        snapshot_get().note_released(node_id, live=released.live)
    await htimers.timer_disarm(job_id=job_id)
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return
    await result_deliver_to(job=job, session_ids=subscribers)
    route_forget(job_id=job_id)
    history_record(job=job)
    logger.debug("job %s ended %s (attempt %s)", job_id, job.state, job.attempt)


async def job_cancel(*, tenant: str, job_id: str) -> JobView:
    """A session cancels its tenant's job: the node is told, the slot freed, the result sent."""
    job = await hjobs.job_get(job_id=job_id)
    if job is None or job.tenant != tenant or job.state.terminal:
        raise JobNotFound(f"no unfinished job {job_id}")
    ended = await job_end(
        job=job, to=JobState.CANCELLED, code=ErrorCode.CANCELLED, message="cancelled by the client"
    )
    if ended is None:
        raise JobNotFound(f"job {job_id} has already finished")
    return ended


async def job_end(*, job: JobView, to: JobState, code: ErrorCode, message: str) -> JobView | None:
    """End an unfinished job as the scheduler (cancel, timeout, lost): None if it already ended.

    Retries while the job keeps moving underneath (an ack or a failover in between), since the
    compare-and-set is on the attempt the caller saw.
    """
    current: JobView | None = job
    for _ in range(5):
        if current is None or current.state.terminal:
            return None
        try:
            transition = await hjobs.job_transition(
                job_id=current.job_id,
                attempt=current.attempt,
                to=to,
                from_states=UNFINISHED,
                error_code=code,
                error_message=message,
            )
        except (hcodes.StaleAttempt, hcodes.BadState):
            current = await hjobs.job_get(job_id=job.job_id)
            continue
        except hcodes.JobNotFound:
            return None
        if not transition.applied:
            return None
        if current.node_id and current.state is not JobState.CREATED:
            # A job_cancel only names CANCELLED, JOB_TIMEOUT or NODE_LOST; a job failed for
            # another reason (MODEL_NOT_AVAILABLE after MAX_ATTEMPTS) is lost to its node.
            reason = code if code in CANCEL_REASONS else ErrorCode.NODE_LOST
            cancel = NodeJobCancel(job_id=current.job_id, attempt=current.attempt, reason=reason)
            await node_job_cancel(node_id=current.node_id, frame=cancel)
        await job_ended(
            job_id=current.job_id, node_id=current.node_id, subscribers=transition.subscribers
        )
        return await hjobs.job_get(job_id=current.job_id)
    return None
