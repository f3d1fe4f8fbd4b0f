"""A job's follow-ups (what its moves left owed), and endings the scheduler decides (a session's
cancel, a timeout, a node lost for good).

DESIGN.md, "Durability and recovery": a move away from a node, or to an end, records on the job
what it leaves owed (``job_transition``); ``job_followups`` does each owed item and marks it
done (``job_settle``). The winner of the move calls it at once; the timer sweep calls it again
for whatever a crash or a Redis error left, so a result is late at worst, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import replace

from core.errors import JobNotFound
from core.runtime import now_ms
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import slots as hslots
from hotstate import timers as htimers
from hotstate.errors import DependencyDown
from hotstate.jobs import OWE_CANCEL, OWE_DELIVER, OWE_RELEASE, JobState, JobView
from hotstate.nodes import reservation_ttl_ms
from jobs.history import history_record
from jobs.selectors import route_forget
from nodes.services import Told, node_job_cancel
from nodes.snapshot import snapshot_get
from protocol import ErrorCode, NodeJobCancel
from sessions.delivery import result_deliver_to

logger = logging.getLogger(__name__)

UNFINISHED = (JobState.CREATED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING)
# After a follow-up failed, the sweep looks again this soon (if the timer can still be armed).
FOLLOWUP_RETRY_MS = 1_000


async def job_followups(*, job_id: str) -> JobView | None:
    """Do what the job's moves left owed, mark each done; the job as read, or None if gone.

    1. Tell each node to stop (``owe:cancel:<node>``); a node ignores a cancel it does not need.
       The node's socket sends the frame, then gives the node's slot back and settles both.
       On an end (``owe:deliver``), meanwhile: put the result in every subscriber's outbox
       (stored once per session, so redoing it cannot deliver twice), forget the route, record
       the history.
    2. Give back the slots of nodes that need no telling (``owe:rel:<node>``: the node ended the
       job itself); releasing twice is harmless. An offline node is told (and freed) once it is
       back, or left to its reservation's expiry.
    3. Settle what was done. An ended job with nothing owed any more needs no timer.

    A follow-up that fails stays owed; its error is raised after the others ran, and the job's
    timer is brought forward so the sweep redoes it soon.
    """
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return None
    owed = await _do_owed(job) if job.owed else 0
    if job.state.terminal and not owed:
        await htimers.timer_disarm(job_id=job_id)
    return job


async def job_followups_now(*, job_id: str) -> None:
    """The mover's own ``job_followups``: a Redis error leaves them to the sweep, not the caller.

    The move has applied; its caller (a node's result, a cancel, a failover) must not see it
    fail for a follow-up that the timer sweep will redo.
    """
    try:
        await job_followups(job_id=job_id)
    except DependencyDown as exc:
        logger.warning("job %s: follow-ups left to the sweep: %s", job_id, exc)
    except Exception:
        # Not Redis being down (a bug, or redis-py failing on a connection torn down under
        # it): still owed, so still the sweep's; logged whole, since it is not expected.
        logger.exception("job %s: follow-ups failed; left to the sweep", job_id)


async def _do_owed(job: JobView) -> int:
    """Do the owed follow-ups; settle the done ones; how many are still owed. Raises the first
    unexpected error, once the others ran and the timer is brought forward.

    A node that must be told to stop gets its slot back from its own socket, after the
    ``job_cancel`` frame (``nodes.services.node_job_cancel``): freed any earlier, the slot could
    take a job that reaches the node before the cancel. Until the socket settles both, they
    stay owed, and the sweep tells the node again (a repeated cancel is harmless).
    """
    cancels = [name for name in job.owed if name.startswith(OWE_CANCEL)]
    told = {name.removeprefix(OWE_CANCEL): name for name in cancels}
    first = [name for name in job.owed if not name.startswith(OWE_RELEASE)]
    outcomes = await _run(job, first)
    done: dict[str, str] = {}
    failed: list[BaseException] = []
    for name, outcome in zip(first, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failed.append(outcome)
        elif outcome is Told.OFFLINE and now_ms() - job.updated_ms >= reservation_ttl_ms():
            # Offline since the move for longer than a reservation lives: its slot has expired
            # by itself (its heartbeats would have kept it only while it ran the job).
            done[name] = job.owed[name]
            release = OWE_RELEASE + name.removeprefix(OWE_CANCEL)
            if release in job.owed:
                done[release] = job.owed[release]
        # OFFLINE (lately): no socket holds the node in Redis' eyes, yet it may still run the
        # job (its presence lapsed while Redis stalled its heartbeats, or it is reconnecting):
        # both stay owed, and it is told, then freed, once it is back. TOLD: the node's socket
        # settles both. UNREACHABLE: both stay owed.
        elif outcome is None:
            done[name] = job.owed[name]
    releases = [
        name
        for name in job.owed
        if name.startswith(OWE_RELEASE) and name.removeprefix(OWE_RELEASE) not in told
    ]
    for name, outcome in zip(releases, await _run(job, releases), strict=True):
        if isinstance(outcome, BaseException):
            failed.append(outcome)
        else:
            done[name] = job.owed[name]
    try:
        owed = await hjobs.job_settle(job_id=job.job_id, done=done) if done else len(job.owed)
    except hcodes.JobNotFound:
        return 0
    if failed or owed:
        await htimers.timer_arm(job_id=job.job_id, due_ms=now_ms() + FOLLOWUP_RETRY_MS)
    if failed:
        raise failed[0]
    return owed


async def _run(job: JobView, names: list[str]) -> list[object]:
    """Run follow-ups concurrently; each one's outcome, or the exception it raised."""
    return await asyncio.gather(*(_followup(job, name) for name in names), return_exceptions=True)


def _followup(job: JobView, name: str) -> Awaitable[Told | None]:
    """One follow-up: None when done, or what became of a node's cancel."""
    if name.startswith(OWE_RELEASE):
        return _release(job, node_id=name.removeprefix(OWE_RELEASE), attempt=int(job.owed[name]))
    if name.startswith(OWE_CANCEL):
        node_id = name.removeprefix(OWE_CANCEL)
        attempt, _, reason = job.owed[name].partition(":")
        cancel = NodeJobCancel(job_id=job.job_id, attempt=int(attempt), reason=ErrorCode(reason))
        release = OWE_RELEASE + node_id
        owed = {name: job.owed[name]}
        if release in job.owed:
            owed[release] = job.owed[release]
        return node_job_cancel(node_id=node_id, frame=cancel, owed=owed)
    if name == OWE_DELIVER:
        return _deliver(job)
    raise ValueError(f"job {job.job_id}: unknown follow-up {name!r}")


async def _release(job: JobView, *, node_id: str, attempt: int) -> None:
    released = await hslots.slot_release(node_id=node_id, job_id=job.job_id, attempt=attempt)
    snapshot_get().note_released(node_id, live=released.live)


async def _deliver(job: JobView) -> None:
    await result_deliver_to(job=job, session_ids=job.subscribers)
    route_forget(job_id=job.job_id)
    history_record(job=job)
    logger.debug("job %s ended %s (attempt %s)", job.job_id, job.state, job.attempt)


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
    compare-and-set is on the attempt the caller saw. The node told to stop is the one the job
    was on when the end applied (recorded by the move itself), not the one the caller read.
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
        await job_followups_now(job_id=current.job_id)
        return replace(
            current, state=to, attempt=transition.attempt, error_code=code, error_message=message
        )
    return None
