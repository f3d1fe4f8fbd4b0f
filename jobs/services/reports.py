"""What a node reports about its jobs: ack, started, progress, result, model_not_available."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from core.events import JobProgressEvent
from core.runtime import INSTANCE_ID
from core.state import STATE
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import mna as hmna
from hotstate import timers as htimers
from hotstate.jobs import JobState
from hotstate.mna import MnaDecision, MnaEvent
from jobs.selectors import route_fenced
from jobs.services.dispatch import check_due_ms, job_failover
from jobs.services.endings import job_followups_now
from protocol import ErrorCode, JobError, ModelNotAvailable, SessionJobProgress, dump
from sessions.delivery import sessions_notify

logger = logging.getLogger(__name__)

# The consumer group of the processes that handle MODEL_NOT_AVAILABLE reports.
MNA_GROUP = "workers"
# Its reader in this process: a seat of the group (a stable consumer name) and claim cursors.
_MNA_READER = hmna.MnaReader(holder=INSTANCE_ID, group=MNA_GROUP)


async def job_ack(*, node_id: str, job_id: str, attempt: int) -> None:
    """DISPATCHED -> ACCEPTED; the ack timer gives way to the job's deadline."""
    transition = await _node_transition(
        node_id=node_id, job_id=job_id, attempt=attempt, to=JobState.ACCEPTED
    )
    if transition is not None and transition.applied:
        job = await hjobs.job_get(job_id=job_id)
        if job is not None:
            await htimers.timer_arm(job_id=job_id, due_ms=check_due_ms(job))


async def job_started(*, node_id: str, job_id: str, attempt: int) -> None:
    await _node_transition(node_id=node_id, job_id=job_id, attempt=attempt, to=JobState.RUNNING)


async def job_result(
    *,
    node_id: str,
    job_id: str,
    attempt: int,
    ok: bool,
    result: dict[str, object] | None,
    error: JobError | None,
) -> None:
    """The node's final word: FINISHED or FAILED; a repeat of the same report is ignored."""
    if ok:
        transition = await _node_transition(
            node_id=node_id,
            job_id=job_id,
            attempt=attempt,
            to=JobState.FINISHED,
            result_json=json.dumps(result or {}, separators=(",", ":")),
        )
    else:
        transition = await _node_transition(
            node_id=node_id,
            job_id=job_id,
            attempt=attempt,
            to=JobState.FAILED,
            error_code=error.code if error else ErrorCode.INTERNAL_ERROR,
            error_message=error.message if error else "the node reported a failure",
        )
    if transition is not None and transition.applied:
        await job_followups_now(job_id=job_id)
    elif transition is not None:
        # A repeat of the node's final report: if the first one's follow-ups failed, this is
        # a chance to finish them now rather than at the sweep.
        job = await hjobs.job_get(job_id=job_id)
        if job is not None and job.owed:
            await job_followups_now(job_id=job_id)


async def _node_transition(
    *,
    node_id: str,
    job_id: str,
    attempt: int,
    to: JobState,
    result_json: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> hjobs.Transition | None:
    """A transition a node asked for. Its other refusals (unknown job, stale attempt, another
    node's job) reach the node as protocol errors (``core.errors.error_reply``).

    A report that arrives after the job moved on (ack after started, result after cancel) is
    not the node's fault and changes nothing: it is ignored without an error.
    """
    try:
        return await hjobs.job_transition(
            job_id=job_id,
            attempt=attempt,
            to=to,
            node_id=node_id,
            result_json=result_json,
            error_code=error_code,
            error_message=error_message,
        )
    except hcodes.BadState as exc:
        logger.debug("job %s: %s ignored in state %s", job_id, to, exc.state)
        return None


async def job_progress(
    *, node_id: str, job_id: str, attempt: int, progress: float, data: dict[str, object] | None
) -> None:
    """Relay progress to the job's sessions that are connected now (dropped for the others)."""
    route = await route_fenced(node_id=node_id, job_id=job_id, attempt=attempt)
    if route.ended:
        # The session has its final result; like a late ack, this is ignored without an error.
        logger.debug("job %s: progress after the end ignored", job_id)
        return
    frame = SessionJobProgress(
        job_id=job_id, request_id=route.request_id, progress=progress, data=data
    )
    await sessions_notify(session_ids=route.subscribers, event=JobProgressEvent(frame=dump(frame)))


# A node's report about a service (naming no job) is enqueued at most once per this window by
# one process; the repeats change nothing the first did not (the mark lasts MNA_MARK_TTL).
MNA_EDGE_WINDOW_S = 1.0
MAX_EDGE_ENTRIES = 100_000


@dataclass
class MnaEdge:
    """When this process last enqueued each node's report about each service, naming no job,
    and how many repeats it skipped (a part of ``STATE``)."""

    enqueued: dict[tuple[str, str, str | None], float] = field(default_factory=dict)
    skipped: int = 0


def _edge_admits(node_id: str, frame: ModelNotAvailable) -> bool:
    """Whether a report naming no job goes to the stream: not if the same one just went.

    A storm of reports (DESIGN.md's acceptance test: ≥ 1,000/s about one service) then costs the
    socket path a dictionary lookup each, and the stream and the workers one entry per node and
    service per window, so it cannot slow down other services' jobs.
    """
    edge = STATE.part(MnaEdge)
    key = (node_id, frame.service.id, frame.service.version)
    now = time.monotonic()
    last = edge.enqueued.get(key)
    if last is not None and now - last < MNA_EDGE_WINDOW_S:
        edge.skipped += 1
        return False
    if len(edge.enqueued) >= MAX_EDGE_ENTRIES:
        edge.enqueued.clear()
    edge.enqueued[key] = now
    return True


async def job_model_not_available(*, node_id: str, frame: ModelNotAvailable) -> None:
    """Only enqueue the report (DESIGN.md): a worker marks the node and fails the job over.

    A report naming a job is fenced like any reply first, so a stale one changes nothing, and
    always enqueued (its job must move). One naming no job is skipped if this process enqueued
    the same one within ``MNA_EDGE_WINDOW_S``.
    """
    if frame.job_id is not None and frame.attempt is not None:
        await route_fenced(node_id=node_id, job_id=frame.job_id, attempt=frame.attempt)
    elif not _edge_admits(node_id, frame):
        return
    await hmna.mna_enqueue(
        node_id=node_id,
        service_id=frame.service.id,
        service_version=frame.service.version,
        reason=frame.reason,
        job_id=frame.job_id,
        attempt=frame.attempt,
    )


async def job_mna_handle(*, event: MnaEvent) -> MnaDecision:
    """The worker's part of a MODEL_NOT_AVAILABLE report.

    1. Mark the node unavailable for the service (rate-limited per node; dropped if over).
    2. The one report per (service, version) and window that wins the debounce is logged for
       operators (the expensive action: everything else is deduplicated away).
    3. A job named by the report goes back to CREATED with attempt + 1 and is placed on another
       node, if it is still that node's job at that attempt.
    """
    decision = await hmna.mna_handle(event=event)
    if decision.run_action:
        logger.warning(
            "service %s@%s reported unavailable by node %s: %s",
            event.service_id,
            event.service_version or "*",
            event.node_id,
            event.reason,
        )
    if event.job_id and event.attempt is not None:
        job = await hjobs.job_get(job_id=event.job_id)
        if job is not None and job.node_id == event.node_id and job.attempt == event.attempt:
            await job_failover(job=job, code=ErrorCode.MODEL_NOT_AVAILABLE, reason=event.reason)
    return decision


async def mna_run() -> None:
    """The MODEL_NOT_AVAILABLE duty: one turn of this process's reader (``hotstate.mna``).

    New reports, and (once a second) those another reader left pending too long; a handled
    report is acknowledged, a failed one comes back after the idle bound, until it is given up
    and counted (``hotstate.mna.mna_dead_letters``).
    """
    await _MNA_READER.turn(lambda event: job_mna_handle(event=event))
