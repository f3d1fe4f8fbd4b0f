"""Placing a job on a node, and taking it off again to place it elsewhere (failover)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection
from dataclasses import replace

from django.conf import settings

from core.events import JobAssignEvent, event_send
from core.runtime import now_ms
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import nodes as hnodes
from hotstate import slots as hslots
from hotstate import timers as htimers
from hotstate.errors import DependencyDown
from hotstate.jobs import JobState, JobView
from hotstate.scripts import call_timeout
from jobs.selectors import route_forget
from jobs.services.endings import UNFINISHED, job_end, job_followups_now
from nodes.selectors import node_candidates
from nodes.snapshot import snapshot_get
from protocol import ErrorCode, JobAssign, ServiceRef, dump

logger = logging.getLogger(__name__)

# How many candidates one dispatch tries to reserve on before giving up (DESIGN.md: bounded).
MAX_RESERVE_TRIES = 4
# A job waiting for a node after a failover is retried this often until its deadline.
REDISPATCH_INTERVAL_MS = 500


class MaybePlaced(DependencyDown):
    """Redis failed the move to DISPATCHED after the slot was reserved: the move may or may not
    have applied. If it did, the node never gets ``job_assign``, and the job's ack timer fails
    it over; if not, the job still waits for a node."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"placing the job on node {node_id}: Redis did not answer")
        self.node_id = node_id


async def job_dispatch(*, job: JobView, exclude: Collection[str]) -> str | None:
    """Place a CREATED job on a node for its current attempt; return the node id or None.

    1. Rank candidates from the local snapshot (may be stale; the reserve script decides).
    2. Reserve a slot on each in turn, at most MAX_RESERVE_TRIES.
    3. CREATED -> DISPATCHED for this attempt (compare-and-set; a cancel or timeout may have
       won meanwhile, then the slot is given back).
    4. Send ``job_assign`` to the consumer that holds the node's socket and arm the ack timer.

    Raises ``MaybePlaced`` if Redis fails step 3 (then nobody knows yet where the job is).
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
        reservation = await hslots.slot_reserve(
            node_id=node.node_id,
            job_id=job.job_id,
            attempt=job.attempt,
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
            await hslots.slot_release(node_id=node.node_id, job_id=job.job_id, attempt=job.attempt)
            return None
        except DependencyDown as exc:
            # The move may have applied when Redis answers again: the job may be this node's,
            # which never gets job_assign. Bring its check forward to the ack timeout, if Redis
            # takes that (else the timer armed at its creation comes first).
            with contextlib.suppress(DependencyDown):
                await htimers.timer_arm(job_id=job.job_id, due_ms=now_ms() + ack_timeout_ms())
            raise MaybePlaced(node.node_id) from exc
        frame = JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            service=ServiceRef(id=job.service_id, version=job.service_version),
            features=list(job.features),
            payload=json.loads(job.payload_json),
            deadline_ms=job.deadline_ms,
        )
        # Arm the ack timer before sending: if this process dies right after the send, another
        # instance still notices a missing ack. The ack timeout, or the job's own deadline if
        # that comes first. From here the job is committed to the node: a Redis error must not
        # turn it into a rejection (the timer armed at its creation still looks at it).
        with contextlib.suppress(DependencyDown):
            await htimers.timer_arm(
                job_id=job.job_id, due_ms=min(job.deadline_ms, now_ms() + ack_timeout_ms())
            )
        sent = await _send_within_deadline(
            node.channel, JobAssignEvent(job_id=job.job_id, attempt=job.attempt, frame=dump(frame))
        )
        if not sent:
            # The socket's process is gone (or stuck): undo this attempt's placement and let
            # the failover path place it elsewhere now, instead of waiting for the ack timeout.
            logger.warning(
                "job %s: node %s unreachable at %s", job.job_id, node.node_id, node.channel
            )
            snapshot.note_removed(node.node_id)
            try:
                await job_failover(
                    job=replace(job, state=JobState.DISPATCHED, node_id=node.node_id),
                    code=ErrorCode.NODE_LOST,
                    reason="the node's socket is unreachable",
                )
                placed = await hjobs.job_get(job_id=job.job_id)
            except DependencyDown:
                # The job is committed to the node: its ack timer fails it over later.
                return node.node_id
            return placed.node_id if placed is not None and placed.node_id else node.node_id
        logger.debug(
            "job %s attempt %s dispatched to node %s", job.job_id, job.attempt, node.node_id
        )
        return node.node_id
    return None


async def job_reject(*, tenant: str, request_id: str, job_id: str) -> bool:
    """End a job nobody was told of (its submit answers, or answered, ``job_rejected``).

    The job never reached a node; FAILED keeps the record consistent for anyone who joined in
    the meantime (they see NO_AVAILABLE_NODE on attempt 1 and answer job_rejected too), no
    result is owed to anyone, and the request id is freed so that a retry is judged afresh.
    False if a cancel or a dispatch got there first: the job stands, and so does its binding.
    """
    try:
        await hjobs.job_transition(
            job_id=job_id,
            attempt=1,
            to=JobState.FAILED,
            from_states=(JobState.CREATED,),
            error_code=ErrorCode.NO_AVAILABLE_NODE,
            error_message="no available node",
            deliver=False,
        )
    except hcodes.Refused:
        return False
    await hjobs.request_release(tenant=tenant, request_id=request_id, job_id=job_id)
    return True


async def _send_within_deadline(channel: str, event: JobAssignEvent) -> bool:
    """``event_send`` bounded like a Redis call of the submit (``call_deadline``); past it, the
    assign counts as not sent (it may still arrive: the node's ack is then fenced or welcome)."""
    try:
        async with asyncio.timeout(call_timeout()):
            return await event_send(channel, event)
    except (TimeoutError, DependencyDown):
        logger.warning(
            "job %s: job_assign to %s not sent within the deadline", event.job_id, channel
        )
        return False


async def job_withdraw(*, tenant: str, request_id: str, job_id: str) -> bool:
    """End a job that Redis placed after its submit had given up on the move to DISPATCHED:
    FAILED at whatever attempt it has reached, its result owed to nobody (the submit may have
    answered ``job_rejected``; a session told ``job_accepted`` gets the failure through its
    expectation), its node told to stop, its request id freed. Called by the submit once Redis
    answers, and by the job's first check. False if it had ended first.
    """
    job = await hjobs.job_get(job_id=job_id)
    for _ in range(5):
        if job is None:
            await hjobs.request_release(tenant=tenant, request_id=request_id, job_id=job_id)
            return True
        if job.state.terminal:
            return False
        try:
            await hjobs.job_transition(
                job_id=job_id,
                attempt=job.attempt,
                to=JobState.FAILED,
                from_states=UNFINISHED,
                error_code=ErrorCode.DEPENDENCY_DOWN,
                error_message="withdrawn: Redis placed it after its submit had given up",
                deliver=False,
            )
        except (hcodes.StaleAttempt, hcodes.BadState):
            job = await hjobs.job_get(job_id=job_id)
            continue
        except hcodes.JobNotFound:
            job = None
            continue
        await job_followups_now(job_id=job_id)
        await hjobs.request_release(tenant=tenant, request_id=request_id, job_id=job_id)
        logger.warning("job %s withdrawn: Redis placed it after its submit had given up", job_id)
        return True
    return False


def ack_timeout_ms() -> int:
    return int(settings.ACK_TIMEOUT * 1000)


def check_due_ms(job: JobView) -> int:
    """When the timer duty next looks at a job: its deadline, or sooner to notice a lost node."""
    return min(job.deadline_ms, now_ms() + hnodes.presence_ttl_ms())


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
    # The move recorded the old node's slot and cancel as owed: done here, or by the sweep.
    await job_followups_now(job_id=job.job_id)
    route_forget(job_id=job.job_id)
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
