"""The job life cycle: submit, dispatch, node reports, cancel, failover, timeouts, delivery.

Every state change is one hot-state script with a compare-and-set on the job's state, attempt
and node (``hotstate.jobs.job_transition``); whoever's transition applies does the follow-up
(release the slot, tell the node, deliver the result), so each follow-up happens once however
many instances race for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from django.conf import settings

from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import mna as hmna
from hotstate import nodes as hnodes
from hotstate import timers as htimers
from hotstate.jobs import JobState, JobView
from hotstate.mna import MnaDecision, MnaEvent
from jobs import delivery
from jobs.history import history_record
from nodes.selectors import node_candidates
from nodes.snapshot import snapshot_get
from protocol import (
    CANCEL_REASONS,
    ErrorCode,
    JobAssign,
    JobError,
    JobSubmit,
    ModelNotAvailable,
    NodeJobCancel,
    ServiceRef,
    SessionJobProgress,
    dump,
)
from scheduler_project.credentials import id_new
from scheduler_project.errors import (
    BadMessage,
    Forbidden,
    JobNotFound,
    NoAvailableNode,
    PayloadTooLarge,
    StaleAttempt,
)
from scheduler_project.runtime import now_ms

logger = logging.getLogger(__name__)

# How many candidates one dispatch tries to reserve on before giving up (DESIGN.md: bounded).
MAX_RESERVE_TRIES = 4
# A duplicate submit that finds its job not yet dispatched waits this long for the first one.
DUPLICATE_WAIT_S = 3.0
# A job waiting for a node after a failover is retried this often until its deadline.
REDISPATCH_INTERVAL_MS = 500
UNFINISHED = (JobState.CREATED, JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING)


@dataclass(frozen=True)
class Accepted:
    job_id: str
    request_id: str
    node_id: str
    duplicate: bool = False


# --- submit -------------------------------------------------------------------------------------


def submit_validate(*, submit: JobSubmit, raw_size: int | None = None) -> tuple[int, str]:
    """Check what the protocol models cannot: payload size and the timeout's upper bound.

    Returns the timeout to use and the payload as stored JSON.
    """
    payload_json = json.dumps(submit.payload, separators=(",", ":"))
    if len(payload_json.encode()) > settings.MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload is larger than {settings.MAX_PAYLOAD_BYTES} bytes")
    timeout_ms = submit.timeout_ms or settings.DEFAULT_JOB_TIMEOUT_MS
    if timeout_ms > settings.MAX_JOB_TIMEOUT_MS:
        raise BadMessage(
            f"job_submit.timeout_ms: at most {settings.MAX_JOB_TIMEOUT_MS}, got {timeout_ms}"
        )
    return timeout_ms, payload_json


async def job_submit(*, tenant: str, session_id: str, submit: JobSubmit) -> Accepted:
    """Create and dispatch a job, or join the one already bound to this request id.

    1. Validate what the models cannot (payload size, timeout bound, known service).
    2. Claim ``(tenant, request_id)`` for a new job id; a lost claim joins the bound job.
    3. Create the job record (CREATED, attempt 1) with this session subscribed.
    4. Dispatch: reserve a slot on the best candidate, mark DISPATCHED, send ``job_assign``.
    5. No node: fail the job quietly and unbind the request, so a retry is judged afresh.
    """
    timeout_ms, payload_json = submit_validate(submit=submit)
    snapshot = snapshot_get()
    snapshot.require_known_service(submit.service.id)
    job_id = id_new(prefix="j")
    lease_ms = hjobs.request_lease_ms(timeout_ms)
    for _ in range(3):
        claim = await hjobs.request_claim(
            tenant=tenant, request_id=submit.request_id, job_id=job_id, lease_ms=lease_ms
        )
        if claim.won:
            break
        joined = await _join_existing(
            tenant=tenant, session_id=session_id, submit=submit, job_id=claim.job_id
        )
        if joined is not None:
            return joined
        # The earlier job was rejected and its binding released meanwhile: judge afresh.
    else:
        raise NoAvailableNode("the request is being retried concurrently; try again")
    await hjobs.job_create(
        job_id=job_id,
        tenant=tenant,
        request_id=submit.request_id,
        session_id=session_id,
        service_id=submit.service.id,
        service_version=submit.service.version,
        features=submit.features or (),
        payload_json=payload_json,
        timeout_ms=timeout_ms,
    )
    node_id = await _dispatch_first(job_id=job_id, submit=submit, payload_json=payload_json)
    if node_id is None:
        await _reject(tenant=tenant, request_id=submit.request_id, job_id=job_id)
        raise NoAvailableNode(f"no online node can take service {_service_name(submit.service)}")
    logger.debug("job %s accepted for request %s on node %s", job_id, submit.request_id, node_id)
    return Accepted(job_id=job_id, request_id=submit.request_id, node_id=node_id)


async def _dispatch_first(*, job_id: str, submit: JobSubmit, payload_json: str) -> str | None:
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return None
    return await job_dispatch(job=job, exclude=())


async def _reject(*, tenant: str, request_id: str, job_id: str) -> None:
    # The job never reached a node; FAILED keeps the record consistent for anyone who joined in
    # the meantime (they see NO_AVAILABLE_NODE on attempt 1 and answer job_rejected too).
    # A refusal means a cancel got there first: nothing to undo.
    with contextlib.suppress(hcodes.Refused):
        await hjobs.job_transition(
            job_id=job_id,
            attempt=1,
            to=JobState.FAILED,
            from_states=(JobState.CREATED,),
            error_code=ErrorCode.NO_AVAILABLE_NODE,
            error_message="no available node",
        )
    await hjobs.request_release(tenant=tenant, request_id=request_id, job_id=job_id)


async def _join_existing(
    *, tenant: str, session_id: str, submit: JobSubmit, job_id: str
) -> Accepted | None:
    """A repeat of a bound request: subscribe this session and answer with the same job.

    Returns None when the earlier job was rejected (its binding is being released), so the
    caller claims afresh.
    """
    deadline = time.monotonic() + DUPLICATE_WAIT_S
    while True:
        try:
            status = await hjobs.job_subscribe(job_id=job_id, tenant=tenant, session_id=session_id)
        except hcodes.JobNotFound:
            # Bound but not yet created by the first submitter (or it crashed in between):
            # wait for it; the binding's lease ends a crashed attempt.
            status = None
        if status is not None:
            job = await hjobs.job_get(job_id=job_id)
            if job is not None and _rejected_before_dispatch(job):
                await hjobs.request_release(
                    tenant=tenant, request_id=submit.request_id, job_id=job_id
                )
                return None
            if job is not None and job.node_id:
                if job.state.terminal:
                    await delivery.result_deliver_to(job=job, session_ids=(session_id,))
                return Accepted(job_id, submit.request_id, job.node_id, duplicate=True)
            if job is not None and job.state.terminal:
                # Ended without ever reaching a node (e.g. cancelled right away).
                await delivery.result_deliver_to(job=job, session_ids=(session_id,))
                return Accepted(job_id, submit.request_id, job.node_id or "-", duplicate=True)
        if time.monotonic() >= deadline:
            raise NoAvailableNode("the first submit of this request_id is still being placed")
        await asyncio.sleep(0.02)


def _rejected_before_dispatch(job: JobView) -> bool:
    return (
        job.state is JobState.FAILED
        and job.error_code == ErrorCode.NO_AVAILABLE_NODE
        and job.attempt == 1
        and not job.node_id
    )


# --- dispatch -----------------------------------------------------------------------------------


async def job_dispatch(*, job: JobView, exclude: Collection[str]) -> str | None:
    """Place a CREATED job on a node for its current attempt; return the node id or None.

    1. Rank candidates from the local snapshot (may be stale; the reserve script decides).
    2. Reserve a slot on each in turn, at most MAX_RESERVE_TRIES.
    3. CREATED -> DISPATCHED for this attempt (compare-and-set; a cancel or timeout may have
       won meanwhile, then the slot is given back).
    4. Send ``job_assign`` to the consumer that holds the node's socket and arm the ack timer.
    """
    snapshot = snapshot_get()
    candidates = node_candidates(
        snapshot=snapshot,
        service_id=job.service_id,
        service_version=job.service_version,
        features=job.features,
        exclude=exclude,
    )
    for node in candidates[:MAX_RESERVE_TRIES]:
        reservation = await hnodes.slot_reserve(
            node_id=node.node_id,
            job_id=job.job_id,
            service_id=job.service_id,
            service_version=job.service_version,
        )
        if not reservation.ok:
            snapshot.note_refusal(node.node_id, reservation.outcome, live=reservation.live)
            continue
        snapshot.note_reserved(node.node_id, live=reservation.live)
        try:
            await hjobs.job_transition(
                job_id=job.job_id,
                attempt=job.attempt,
                to=JobState.DISPATCHED,
                node_id=node.node_id,
                from_states=(JobState.CREATED,),
            )
        except hcodes.Refused:
            # Cancelled, timed out or placed by another instance first: give the slot back.
            await hnodes.slot_release(node_id=node.node_id, job_id=job.job_id)
            return None
        frame = JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            service=ServiceRef(id=job.service_id, version=job.service_version),
            features=list(job.features),
            payload=json.loads(job.payload_json),
            deadline_ms=job.deadline_ms,
        )
        # Arm the ack timer before sending: if this process dies right after the send, another
        # instance still notices a missing ack.
        # The ack timeout, or the job's own deadline if that comes first.
        await htimers.timer_arm(
            job_id=job.job_id, due_ms=min(job.deadline_ms, now_ms() + _ack_timeout_ms())
        )
        sent = await delivery.node_send(
            channel=node.channel,
            event={
                "type": "job.assign",
                "job_id": job.job_id,
                "attempt": job.attempt,
                "request_id": job.request_id,
                "frame": dump(frame),
            },
        )
        if not sent:
            # The socket's process is gone (or stuck): undo this attempt's placement and let
            # the failover path place it elsewhere now, instead of waiting for the ack timeout.
            logger.warning(
                "job %s: node %s unreachable at %s", job.job_id, node.node_id, node.channel
            )
            snapshot.note_removed(node.node_id)
            await job_failover(
                job=replace(job, state=JobState.DISPATCHED, node_id=node.node_id),
                code=ErrorCode.NODE_LOST,
                reason="the node's socket is unreachable",
            )
            placed = await hjobs.job_get(job_id=job.job_id)
            return placed.node_id if placed is not None and placed.node_id else node.node_id
        logger.debug(
            "job %s attempt %s dispatched to node %s", job.job_id, job.attempt, node.node_id
        )
        return node.node_id
    return None


def _ack_timeout_ms() -> int:
    return int(settings.ACK_TIMEOUT * 1000)


# --- node reports -------------------------------------------------------------------------------


async def job_ack(*, node_id: str, job_id: str, attempt: int) -> None:
    """DISPATCHED -> ACCEPTED; the ack timer gives way to the job's deadline."""
    transition = await _node_transition(
        node_id=node_id, job_id=job_id, attempt=attempt, to=JobState.ACCEPTED
    )
    if transition is not None and transition.applied:
        job = await hjobs.job_get(job_id=job_id)
        if job is not None:
            await htimers.timer_arm(job_id=job_id, due_ms=_next_check_ms(job))


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
        await job_ended(job_id=job_id, node_id=node_id, subscribers=transition.subscribers)


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
    """A transition a node asked for, with its refusals as protocol errors.

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
    except hcodes.JobNotFound:
        raise JobNotFound(f"no job {job_id}") from None
    except hcodes.StaleAttempt as exc:
        raise StaleAttempt(f"job {job_id} is at attempt {exc.attempt}, not {attempt}") from None
    except hcodes.Forbidden:
        raise Forbidden(f"job {job_id} is not assigned to this node") from None
    except hcodes.BadState as exc:
        logger.debug("job %s: %s ignored in state %s", job_id, to, exc.state)
        return None


async def job_progress(
    *, node_id: str, job_id: str, attempt: int, progress: float, data: dict[str, object] | None
) -> None:
    """Relay progress to the job's sessions that are connected now (dropped for the others)."""
    route = await delivery.route_get(job_id=job_id)
    if route is None:
        raise JobNotFound(f"no job {job_id}")
    if route.node_id != node_id:
        raise Forbidden(f"job {job_id} is not assigned to this node")
    if route.attempt != attempt:
        raise StaleAttempt(f"job {job_id} is at attempt {route.attempt}, not {attempt}")
    if route.ended:
        # The session has its final result; like a late ack, this is ignored without an error.
        logger.debug("job %s: progress after the end ignored", job_id)
        return
    frame = SessionJobProgress(
        job_id=job_id, request_id=route.request_id, progress=progress, data=data
    )
    await delivery.sessions_notify(
        session_ids=route.subscribers, event={"type": "job.progress", "frame": dump(frame)}
    )


async def job_model_not_available(*, node_id: str, frame: ModelNotAvailable) -> None:
    """Only enqueue the report (DESIGN.md): a worker marks the node and fails the job over.

    A report naming a job is fenced like any reply first, so a stale one changes nothing.
    """
    if frame.job_id is not None:
        route = await delivery.route_get(job_id=frame.job_id)
        if route is None:
            raise JobNotFound(f"no job {frame.job_id}")
        if route.node_id != node_id:
            raise Forbidden(f"job {frame.job_id} is not assigned to this node")
        if route.attempt != frame.attempt:
            raise StaleAttempt(
                f"job {frame.job_id} is at attempt {route.attempt}, not {frame.attempt}"
            )
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


# --- endings ------------------------------------------------------------------------------------


async def job_ended(*, job_id: str, node_id: str | None, subscribers: Sequence[str]) -> None:
    """Follow-up of the one transition that ended the job: free the slot, deliver, record."""
    if node_id:
        released = await hnodes.slot_release(node_id=node_id, job_id=job_id)
        snapshot_get().note_released(node_id, live=released.live)
    await htimers.timer_disarm(job_id=job_id)
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return
    await delivery.result_deliver_to(job=job, session_ids=subscribers)
    delivery.route_forget(job_id=job_id)
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
            await delivery.node_cancel(node_id=current.node_id, frame=cancel)
        await job_ended(
            job_id=current.job_id, node_id=current.node_id, subscribers=transition.subscribers
        )
        return await hjobs.job_get(job_id=current.job_id)
    return None


async def job_failover(*, job: JobView, code: ErrorCode, reason: str) -> None:
    """Take the job off its node and place it elsewhere, or fail it after MAX_ATTEMPTS.

    Used for a lost node (NODE_LOST), a missing ack (NODE_LOST) and model_not_available.
    """
    if job.state.terminal or job.state is JobState.CREATED:
        return
    if job.attempt >= settings.MAX_ATTEMPTS:
        await job_end(job=job, to=JobState.FAILED, code=code, message=reason)
        return
    try:
        transition = await hjobs.job_transition(
            job_id=job.job_id,
            attempt=job.attempt,
            to=JobState.CREATED,
            from_states=(JobState.DISPATCHED, JobState.ACCEPTED, JobState.RUNNING),
        )
    except hcodes.Refused:
        return  # moved on meanwhile (finished, cancelled, or failed over by someone else)
    if not transition.applied:
        return
    logger.info(
        "job %s failed over from node %s (%s): attempt %s",
        job.job_id,
        job.node_id,
        reason,
        transition.attempt,
    )
    if job.node_id:
        await hnodes.slot_release(node_id=job.node_id, job_id=job.job_id)
        cancel = NodeJobCancel(job_id=job.job_id, attempt=job.attempt, reason=ErrorCode.NODE_LOST)
        await delivery.node_cancel(node_id=job.node_id, frame=cancel)
    delivery.route_forget(job_id=job.job_id)
    await job_redispatch(job_id=job.job_id, exclude=(job.node_id,) if job.node_id else ())


async def job_redispatch(*, job_id: str, exclude: Collection[str] = ()) -> None:
    """Place a CREATED job again; if no node can take it now, try again shortly."""
    job = await hjobs.job_get(job_id=job_id)
    if job is None or job.state is not JobState.CREATED:
        return
    node_id = await job_dispatch(job=job, exclude=exclude)
    if node_id is None:
        node_id = await job_dispatch(job=job, exclude=())
    if node_id is None:
        await htimers.timer_arm(job_id=job_id, due_ms=now_ms() + REDISPATCH_INTERVAL_MS)


def _next_check_ms(job: JobView) -> int:
    """When the timer duty next looks at a job: its deadline, or sooner to notice a lost node."""
    return min(job.deadline_ms, now_ms() + _node_check_ms())


def _node_check_ms() -> int:
    return hnodes.presence_ttl_ms()


async def job_check(*, job_id: str) -> None:
    """The timer duty's look at one job whose timer came due.

    1. Ended: nothing to do.
    2. Past its deadline: TIMED_OUT, the node gets job_cancel{JOB_TIMEOUT}.
    3. CREATED (waiting for a node after a failover): dispatch again.
    4. DISPATCHED and not acked within ACK_TIMEOUT: fail over (NODE_LOST).
    5. Its node is offline (no presence): fail over (NODE_LOST).
    6. Otherwise look again later.
    """
    job = await hjobs.job_get(job_id=job_id)
    if job is None or job.state.terminal:
        await htimers.timer_disarm(job_id=job_id)
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
    if job.state is JobState.DISPATCHED and now >= job.updated_ms + _ack_timeout_ms():
        await job_failover(job=job, code=ErrorCode.NODE_LOST, reason="the node did not ack")
        return
    if job.node_id and not await hnodes.node_present(node_id=job.node_id):
        await job_failover(job=job, code=ErrorCode.NODE_LOST, reason="the node went offline")
        return
    await htimers.timer_arm(job_id=job_id, due_ms=_next_check_ms(job))


async def job_view(*, tenant: str, job_id: str) -> JobView:
    """A tenant's job, for the HTTP API; another tenant's is not found."""
    job = await hjobs.job_get(job_id=job_id)
    if job is None or job.tenant != tenant:
        raise JobNotFound(f"no job {job_id}")
    return job


def _service_name(service: ServiceRef) -> str:
    return service.id if service.version is None else f"{service.id}@{service.version}"


__all__ = [
    "Accepted",
    "job_ack",
    "job_cancel",
    "job_check",
    "job_dispatch",
    "job_end",
    "job_failover",
    "job_progress",
    "job_result",
    "job_started",
    "job_submit",
    "job_view",
]
