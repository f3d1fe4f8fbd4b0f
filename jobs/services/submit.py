"""Submitting a job: claim the request id, create the record, dispatch, or join the bound job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.credentials import id_new
from core.errors import BadMessage, NoAvailableNode, PayloadTooLarge
from core.runtime import now_ms
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import timers as htimers
from hotstate.errors import DependencyDown
from hotstate.jobs import JobState, JobView
from jobs.services.dispatch import ack_timeout_ms, job_dispatch, job_reject
from nodes.snapshot import snapshot_get
from protocol import ErrorCode, JobSubmit, ServiceRef
from sessions.delivery import outbox_expect, result_deliver_to

logger = logging.getLogger(__name__)

# A duplicate submit that finds its job not yet dispatched waits this long for the first one.
DUPLICATE_WAIT_S = 3.0


@dataclass(frozen=True)
class Accepted:
    job_id: str
    request_id: str
    node_id: str
    duplicate: bool = False


def submit_validate(*, submit: JobSubmit) -> tuple[int, str]:
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
    snapshot_get().require_known_service(submit.service.id)
    job_id = id_new(prefix="j")
    lease_ms = hjobs.request_lease_ms(timeout_ms)
    for round_ in range(3):
        claiming = hjobs.request_claim(
            tenant=tenant, request_id=submit.request_id, job_id=job_id, lease_ms=lease_ms
        )
        if round_ == 0:
            # The job's timer exists before its record (DESIGN.md): whatever fails after the
            # create, the sweep comes back to the job. A claim lost to an earlier job leaves a
            # timer for nothing, which the sweep disarms.
            claim, _ = await asyncio.gather(
                claiming, htimers.timer_arm(job_id=job_id, due_ms=_first_check_ms())
            )
        else:
            claim = await claiming
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
    await _create(
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
    try:
        node_id = await _dispatch_first(job_id=job_id)
    except DependencyDown:
        # Nobody has been told of the job: end it quietly if it is still waiting, or leave it
        # to its timer (a retry of the request joins it).
        with contextlib.suppress(DependencyDown):
            await job_reject(tenant=tenant, request_id=submit.request_id, job_id=job_id)
        raise
    if node_id is None:
        node_id = await _placed_elsewhere(
            tenant=tenant, request_id=submit.request_id, job_id=job_id
        )
        if node_id is None:
            raise NoAvailableNode(
                f"no online node can take service {_service_name(submit.service)}"
            )
    # From here the session's sweep sees to it that the result, or JOB_LOST, reaches it.
    await outbox_expect(session_id=session_id, job_id=job_id, request_id=submit.request_id)
    logger.debug("job %s accepted for request %s on node %s", job_id, submit.request_id, node_id)
    return Accepted(job_id=job_id, request_id=submit.request_id, node_id=node_id)


async def _placed_elsewhere(*, tenant: str, request_id: str, job_id: str) -> str | None:
    """This submit's dispatch placed nothing: reject the job, unless the sweep's dispatch got
    there first (then the job stands: answer with its node, or "-" while it waits)."""
    if await job_reject(tenant=tenant, request_id=request_id, job_id=job_id):
        return None
    job = await hjobs.job_get(job_id=job_id)
    if job is None or _rejected_before_dispatch(job):
        return None
    return job.node_id or "-"


def _first_check_ms() -> int:
    # Late enough that the create (bounded by REDIS_SOCKET_TIMEOUT) has returned or failed.
    bound_ms = int(settings.REDIS_SOCKET_TIMEOUT * 1000)
    return now_ms() + max(ack_timeout_ms(), 2 * bound_ms)


async def _create(*, tenant: str, request_id: str, job_id: str, **fields: Any) -> None:
    """Create the record; if that fails, free the request id for a retry (best effort)."""
    try:
        await hjobs.job_create(job_id=job_id, tenant=tenant, request_id=request_id, **fields)
    except DependencyDown:
        # The create may have happened: the timer armed first looks at the job then.
        with contextlib.suppress(DependencyDown):
            if await hjobs.job_get(job_id=job_id) is None:
                await hjobs.request_release(tenant=tenant, request_id=request_id, job_id=job_id)
        raise


async def _dispatch_first(*, job_id: str) -> str | None:
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return None
    return await job_dispatch(job=job, exclude=())


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
                    await result_deliver_to(job=job, session_ids=(session_id,))
                else:
                    await outbox_expect(
                        session_id=session_id, job_id=job_id, request_id=submit.request_id
                    )
                return Accepted(job_id, submit.request_id, job.node_id, duplicate=True)
            if job is not None and job.state.terminal:
                # Ended without ever reaching a node (e.g. cancelled right away).
                await result_deliver_to(job=job, session_ids=(session_id,))
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


def _service_name(service: ServiceRef) -> str:
    return service.id if service.version is None else f"{service.id}@{service.version}"
