"""Submitting a job: claim the request id, create the record, dispatch, or join the bound job."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings

from core.credentials import id_new
from core.errors import BadMessage, NoAvailableNode, PayloadTooLarge
from core.runtime import now_ms
from core.state import STATE
from hotstate import codes as hcodes
from hotstate import jobs as hjobs
from hotstate import timers as htimers
from hotstate.errors import DependencyDown
from hotstate.jobs import JobCreated, JobState, JobView
from hotstate.scripts import call_deadline
from jobs.services.dispatch import (
    MaybePlaced,
    ack_timeout_ms,
    job_dispatch,
    job_reject,
    job_withdraw,
)
from nodes.snapshot import snapshot_get
from protocol import ErrorCode, JobSubmit, ServiceRef
from sessions.delivery import outbox_expect, outbox_forgo, result_deliver_to

logger = logging.getLogger(__name__)

# A duplicate submit that finds its job not yet dispatched waits this long for the first one.
DUPLICATE_WAIT_S = 3.0
# The bound of the one call that decides a submit whose placement Redis left unanswered.
MAYBE_PLACED_EXPECT_S = 2.0
# How long, and how often, a job placed for a rejected submit is retried to be withdrawn.
WITHDRAW_FOR_S = 60.0
WITHDRAW_RETRY_S = 0.5


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
    """Submit a job (``_submit``); its Redis calls end within SUBMIT_DEADLINE_S in all."""
    with call_deadline(settings.SUBMIT_DEADLINE_S):
        return await _submit(tenant=tenant, session_id=session_id, submit=submit)


async def _submit(*, tenant: str, session_id: str, submit: JobSubmit) -> Accepted:
    """Create and dispatch a job, or join the one already bound to this request id.

    1. Validate what the models cannot (payload size, timeout bound, known service).
    2. Claim ``(tenant, request_id)`` for a new job id; a lost claim joins the bound job.
    3. Create the job record (CREATED, attempt 1) with this session subscribed.
    4. Dispatch: reserve a slot on the best candidate, mark DISPATCHED, send ``job_assign``.
    5. No node: fail the job quietly and unbind the request, so a retry is judged afresh.
    6. A Redis error ends the submit at once (``DEPENDENCY_DOWN``). What it left half done is
       finished by a repeat of the request, or ended quietly by the job's timer.
    """
    timeout_ms, payload_json = submit_validate(submit=submit)
    snapshot_get().require_known_service(submit.service.id)
    job_id = id_new(prefix="j")
    lease_ms = hjobs.request_lease_ms(timeout_ms)
    fields = _Fields(tenant, session_id, submit, timeout_ms, payload_json)
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
        joined = await _join_existing(fields, job_id=claim.job_id)
        if joined is not None:
            return joined
        # The earlier job was rejected and its binding released meanwhile: judge afresh.
    else:
        raise NoAvailableNode("the request is being retried concurrently; try again")
    return await _place(fields, job_id=job_id, duplicate=False)


@dataclass(frozen=True)
class _Fields:
    """What a submit brings to the job it creates."""

    tenant: str
    session_id: str
    submit: JobSubmit
    timeout_ms: int
    payload_json: str


async def _place(fields: _Fields, *, job_id: str, duplicate: bool) -> Accepted:
    """Create the job (or join its record, if a first submit created it) and dispatch it.

    A Redis error is raised at once: nothing here waits on a second call to tidy up. A job whose
    create or dispatch failed midway is the sweep's (it ends it quietly at its first check), and
    a repeat of the request places it meanwhile (``_adopt``).
    """
    submit = fields.submit
    created = await hjobs.job_create(
        job_id=job_id,
        tenant=fields.tenant,
        request_id=submit.request_id,
        session_id=fields.session_id,
        service_id=submit.service.id,
        service_version=submit.service.version,
        features=submit.features or (),
        payload_json=fields.payload_json,
        timeout_ms=fields.timeout_ms,
    )
    try:
        node_id = await _dispatch_first(fields, job_id=job_id, created=created)
    except MaybePlaced as exc:
        return await _maybe_placed(fields, job_id=job_id, node_id=exc.node_id, error=exc)
    if node_id is None:
        node_id = await _placed_elsewhere(
            tenant=fields.tenant, request_id=submit.request_id, job_id=job_id
        )
        if node_id is None:
            raise NoAvailableNode(
                f"no online node can take service {_service_name(submit.service)}"
            )
    # From here the session's sweep sees to it that the result, or JOB_LOST, reaches it. The
    # job is placed whatever happens to this call: the session is told so, and without the
    # expectation only the rare loss of the job's record would go unanswered.
    try:
        await outbox_expect(
            session_id=fields.session_id, job_id=job_id, request_id=submit.request_id
        )
    except DependencyDown as exc:
        logger.warning("job %s: accepted without its expectation: %s", job_id, exc)
    logger.debug("job %s accepted for request %s on node %s", job_id, submit.request_id, node_id)
    return Accepted(job_id, submit.request_id, node_id, duplicate=duplicate)


async def _maybe_placed(
    fields: _Fields, *, job_id: str, node_id: str, error: MaybePlaced
) -> Accepted:
    """The move to DISPATCHED may have applied: a rejection now could be followed by the job's
    result (it ran), so the session is told job_accepted, if its expectation can be recorded.

    Either way the session then gets a result: the job's own if it was placed (its ack timer
    fails it over to a node that answers), or, if it was not, the quiet failure of a job left
    unplaced at its first check, which the session's sweep finds for its expectation. If the
    expectation cannot be recorded either, the session is told job_rejected, and the job is
    withdrawn once Redis answers (``job_withdraw``), so that it does not run after all.
    """
    submit = fields.submit
    try:
        # Past the submit's deadline by now, most likely: this one call gets a bound of its own.
        with call_deadline(MAYBE_PLACED_EXPECT_S):
            await outbox_expect(
                session_id=fields.session_id, job_id=job_id, request_id=submit.request_id
            )
    except DependencyDown:
        # The session is told job_rejected: the job must not run, if Redis placed it, and its
        # result must not reach the session, if the expectation was recorded after all.
        _withdraw_later(
            tenant=fields.tenant,
            request_id=submit.request_id,
            job_id=job_id,
            session_id=fields.session_id,
        )
        raise
    logger.warning(
        "job %s: accepted while its placement on %s is unknown: %s", job_id, node_id, error
    )
    return Accepted(job_id, submit.request_id, node_id)


@dataclass
class Withdrawals:
    """Jobs being withdrawn in the background (a part of ``STATE``): the tasks, held."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _withdraw_later(*, tenant: str, request_id: str, job_id: str, session_id: str) -> None:
    """Once Redis answers again, ``outbox_forgo`` (the session never gets the job's result: an
    expectation whose call timed out may have been recorded after all) and ``job_withdraw``:
    retried for WITHDRAW_FOR_S, in a task of its own, outside the submit's deadline (a fresh
    context)."""

    async def withdraw() -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + WITHDRAW_FOR_S
        forgone = False
        while True:
            try:
                if not forgone:
                    await outbox_forgo(session_id=session_id, job_id=job_id)
                    forgone = True
                await job_withdraw(tenant=tenant, request_id=request_id, job_id=job_id)
                return
            except DependencyDown as exc:
                if loop.time() >= until:
                    logger.error("job %s: could not be withdrawn: %s", job_id, exc)
                    return
                await asyncio.sleep(WITHDRAW_RETRY_S)

    tasks = STATE.part(Withdrawals).tasks
    task = asyncio.get_running_loop().create_task(withdraw(), context=contextvars.Context())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


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


async def _dispatch_first(fields: _Fields, *, job_id: str, created: JobCreated) -> str | None:
    """Dispatch the job this submit created or joined.

    A job this call created is exactly what the submit wrote (CREATED, attempt 1): it is built
    here rather than read back, one Redis round trip fewer on every submit. A job that existed
    (a repeat placing what its first submit left) is read, since it may have moved on.
    """
    if created.created:
        job: JobView | None = _as_created(fields, job_id=job_id, deadline_ms=created.deadline_ms)
    else:
        job = await hjobs.job_get(job_id=job_id)
    if job is None:
        return None
    return await job_dispatch(job=job, exclude=())


def _as_created(fields: _Fields, *, job_id: str, deadline_ms: int) -> JobView:
    """The record ``job_create`` has just written for ``fields`` (see its script)."""
    submit = fields.submit
    created_ms = deadline_ms - fields.timeout_ms
    return JobView(
        job_id=job_id,
        state=JobState.CREATED,
        attempt=1,
        node_id=None,
        tenant=fields.tenant,
        request_id=submit.request_id,
        session_id=fields.session_id,
        service_id=submit.service.id,
        service_version=submit.service.version,
        features=tuple(sorted(submit.features or ())),
        payload_json=fields.payload_json,
        timeout_ms=fields.timeout_ms,
        deadline_ms=deadline_ms,
        created_ms=created_ms,
        updated_ms=created_ms,
        result_json=None,
        error_code=None,
        error_message=None,
        finished_ms=None,
        subscribers=frozenset({fields.session_id}),
    )


async def _join_existing(fields: _Fields, *, job_id: str) -> Accepted | None:
    """A repeat of a bound request: subscribe this session and answer with the same job.

    Returns None when the earlier job was rejected (its binding is being released), so the
    caller claims afresh. A job still not placed after DUPLICATE_WAIT_S (its first submit
    crashed or failed between the claim and the dispatch) is placed by this repeat.
    """
    tenant, session_id, submit = fields.tenant, fields.session_id, fields.submit
    deadline = time.monotonic() + DUPLICATE_WAIT_S
    while True:
        try:
            status = await hjobs.job_subscribe(job_id=job_id, tenant=tenant, session_id=session_id)
        except hcodes.JobNotFound:
            # Bound but not yet created by the first submitter (or it failed in between).
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
            return await _adopt(fields, job_id=job_id)
        await asyncio.sleep(0.02)


async def _adopt(fields: _Fields, *, job_id: str) -> Accepted:
    """Place a bound job that its first submit left unplaced.

    Safe while that submit is merely slow: the create is idempotent by job id and the dispatch
    a compare-and-set, so one of the two places it and both answer with it.
    """
    logger.info("request %s: placing its job %s left unplaced", fields.submit.request_id, job_id)
    await htimers.timer_arm(job_id=job_id, due_ms=_first_check_ms())
    return await _place(fields, job_id=job_id, duplicate=True)


def _rejected_before_dispatch(job: JobView) -> bool:
    return (
        job.state is JobState.FAILED
        and job.error_code == ErrorCode.NO_AVAILABLE_NODE
        and job.attempt == 1
        and not job.node_id
    )


def _service_name(service: ServiceRef) -> str:
    return service.id if service.version is None else f"{service.id}@{service.version}"
