"""The timer duty: each job's timer brings it back for a look (deadline, ack, lost node)."""

from __future__ import annotations

import logging

from django.conf import settings

from core.runtime import now_ms
from hotstate import jobs as hjobs
from hotstate import nodes as hnodes
from hotstate import timers as htimers
from hotstate.jobs import JobState, JobView
from jobs.services.dispatch import (
    ack_timeout_ms,
    check_due_ms,
    job_failover,
    job_redispatch,
    job_reject,
    job_withdraw,
)
from jobs.services.endings import job_end, job_followups
from protocol import ErrorCode

logger = logging.getLogger(__name__)

TIMER_BATCH = 200


async def job_check(*, job_id: str) -> None:
    """The timer duty's look at one job whose timer came due.

    1. Owed follow-ups (a crash or a Redis error after a move): redo them. Ended: that is all.
    2. Never dispatched (CREATED, attempt 1): its submit failed midway; end it quietly.
       Placed only after its submit gave up (DISPATCHED, attempt 1, the move applied later than
       SUBMIT_DEADLINE_S after the create): withdraw it (``job_withdraw``), for the same reason.
    3. Past its deadline: TIMED_OUT, the node gets job_cancel{JOB_TIMEOUT}.
    4. CREATED (waiting for a node after a failover): dispatch again.
    5. DISPATCHED and not acked within ACK_TIMEOUT: fail over (NODE_LOST).
    6. Its node is offline (no presence): fail over (NODE_LOST).
    7. Otherwise look again later.
    """
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        # Never created (a lost claim armed it first), or gone: the sessions' own sweep
        # answers a job they were promised with JOB_LOST.
        await htimers.timer_disarm(job_id=job_id)
        return
    if job.owed or job.state.terminal:
        await job_followups(job_id=job_id)
        if job.state.terminal:
            return
    if job.state is JobState.CREATED and job.attempt == 1:
        # Never dispatched by its first check: its submitter crashed, or Redis failed it,
        # between the create and the dispatch, so its session never heard job_accepted. End it
        # as that submit would have: quietly, the request id free for a retry.
        await job_reject(tenant=job.tenant, request_id=job.request_id, job_id=job_id)
        return
    if _placed_after_its_submit_gave_up(job):
        # A stalled Redis ran the move to DISPATCHED after the submit's calls had timed out
        # (MaybePlaced): the session may have been told job_rejected, and the node never got
        # job_assign. Its submit withdraws it too, once Redis answers; whoever comes first
        # ends it, quietly, before its deadline or ack check could end it with a result. A
        # session told job_accepted gets that failure through its expectation.
        await job_withdraw(tenant=job.tenant, request_id=job.request_id, job_id=job_id)
        return
    now = now_ms()
    if now >= job.deadline_ms:
        await job_end(
            job=job,
            to=JobState.TIMED_OUT,
            code=ErrorCode.JOB_TIMEOUT,
            message=f"the job did not finish within {job.timeout_ms} ms",
        )
        return
    if job.state is JobState.CREATED:
        await job_redispatch(job_id=job_id)
        return
    if job.state is JobState.DISPATCHED and now >= job.updated_ms + ack_timeout_ms():
        await job_failover(job=job, code=ErrorCode.NODE_LOST, reason="the node did not ack")
        return
    if job.node_id and not await hnodes.node_present(node_id=job.node_id):
        await job_failover(job=job, code=ErrorCode.NODE_LOST, reason="the node went offline")
        return
    await htimers.timer_arm(job_id=job_id, due_ms=check_due_ms(job))


def _placed_after_its_submit_gave_up(job: JobView) -> bool:
    # Both times are the job's primary's clock; the submit's deadline began before the create.
    return (
        job.state is JobState.DISPATCHED
        and job.attempt == 1
        and job.updated_ms - job.created_ms > settings.SUBMIT_DEADLINE_S * 1000
    )


async def timers_run() -> None:
    """The timer duty: look at every job whose timer is due."""
    for job_id in await htimers.timers_claim(now_ms=now_ms(), limit=TIMER_BATCH):
        try:
            await job_check(job_id=job_id)
        except Exception:
            # The claim's lease brings the timer back; one bad job must not stop the others.
            logger.exception("job %s: timer check failed", job_id)
