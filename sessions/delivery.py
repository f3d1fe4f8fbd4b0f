"""Getting a job's progress and final result to the sessions that submitted it.

The job life cycle puts results in (``result_deliver_to``); the session's socket takes them
out (``outbox_take``), at once when told, and from its sweep. A session is reached through its
owner key (the channel of the consumer holding its socket). A final result is first stored in
the session's outbox (Redis, kept for resume), then the owner is told to take it; taking is
atomic, so each session sends it once even if it resumed on another instance meanwhile.
Progress is best effort: sessions away when it happens miss it.

The notice can be lost (a full channel drops it), and so can the put (a Redis error after the
job ended, or a failover that loses the outbox or the job's record), and so can the answer to
a take (a timeout while the server is frozen; it runs the take when it wakes up). Three things
make that cost latency, not the result:

1. A connected (or just resumed) session sweeps its outbox every ``SWEEP_INTERVAL_S``: one
   bounded call that returns some waiting results and the expectations due for a check.
2. A submit records the job as owed to its session (``outbox_expect``). A put settles it. The
   sweep checks an expectation ``EXPECT_GRACE_S`` after it was made, and again every
   ``EXPECT_RECHECK_S`` while the job runs: a job whose record is gone is answered
   ``JOB_LOST`` (PROTOCOL.md v1.1 §6); a job that ended more than ``EXPECT_GRACE_S`` ago
   without its result reaching the outbox gets it put again.
3. Each take has a token of its own (``outbox_take``). A socket whose take failed remembers it
   and repeats it, with the same token, first thing at its next sweep turn: the frame comes
   back if the take ran, and nobody else can get it meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.events import Event, SessionDeliverEvent, event_send
from core.state import STATE
from hotstate import jobs as hjobs
from hotstate import sessions as hsessions
from hotstate.jobs import JobState, JobView
from protocol import ErrorCode, JobError, SessionJobResult, dump

logger = logging.getLogger(__name__)

OWNER_TTL_S = 1.0
MAX_CACHED_OWNERS = 100_000

# The sweep of a connected session: how often, and how much one turn looks at.
SWEEP_INTERVAL_S = 1.0
SWEEP_PENDING = 32
SWEEP_EXPECTED = 8
# An expectation is first checked this long after the submit, and a job's end this long after
# it happened: the normal delivery has had its chance by then.
EXPECT_GRACE_S = 5.0
EXPECT_RECHECK_S = 5.0


@dataclass
class SessionOwners:
    """Which channel holds each session's socket, as last read (a part of ``STATE``)."""

    channels: dict[str, tuple[float, str | None]] = field(default_factory=dict)


async def session_channel(session_id: str) -> str | None:
    """The channel holding the session's socket now (cached for a second), or None."""
    owners = STATE.part(SessionOwners).channels
    cached = owners.get(session_id)
    now = time.monotonic()
    if cached is not None and now - cached[0] < OWNER_TTL_S:
        return cached[1]
    channel = await hsessions.session_owner_get(session_id=session_id)
    if len(owners) > MAX_CACHED_OWNERS:
        owners.clear()
    owners[session_id] = (now, channel)
    return channel


def session_channel_forget(session_id: str) -> None:
    STATE.part(SessionOwners).channels.pop(session_id, None)


def _real(session_ids: Iterable[str]) -> list[str]:
    # A job submitted over HTTP has no session: its submit subscribed the empty id, which names
    # no session key (and cannot be made into one).
    return [session_id for session_id in session_ids if session_id]


async def sessions_notify(*, session_ids: Iterable[str], event: Event) -> None:
    """Send ``event`` to each session's socket that is connected now; the others miss it."""
    for session_id in _real(session_ids):
        channel = await session_channel(session_id)
        if channel:
            await event_send(channel, event)


def result_frame(job: JobView) -> SessionJobResult:
    """The ``job_result`` a session gets for an ended job."""
    if job.state is JobState.FINISHED:
        result = json.loads(job.result_json) if job.result_json else {}
        return SessionJobResult(
            job_id=job.job_id, request_id=job.request_id, ok=True, result=result
        )
    return SessionJobResult(
        job_id=job.job_id,
        request_id=job.request_id,
        ok=False,
        error=JobError(code=job.error_code or job.state.value, message=job.error_message or ""),
    )


async def result_deliver_to(*, job: JobView, session_ids: Iterable[str]) -> None:
    """Store the result in each session's outbox, then tell its socket (if any) to take it."""
    frame_json = dump(result_frame(job))
    for session_id in _real(session_ids):
        await hsessions.session_result_put(
            session_id=session_id, job_id=job.job_id, frame_json=frame_json
        )
        session_channel_forget(session_id)
        channel = await session_channel(session_id)
        if channel:
            await event_send(channel, SessionDeliverEvent(job_id=job.job_id))


async def outbox_take(*, session_id: str, job_id: str, token: str) -> str | None:
    """Take a waiting result (the ``job_result`` frame) so that exactly one socket sends it.

    ``token`` names this take and no other: after a failure (the take may have run on the
    server), the same call with the same token, within ``hsessions.HANDED_KEEP_MS``, returns
    the frame if this take got it.
    """
    return await hsessions.session_result_take(session_id=session_id, job_id=job_id, token=token)


async def outbox_return(*, session_id: str, job_id: str, frame: str) -> None:
    """Put back a result taken but not sent (the socket closed meanwhile): the session's next
    socket sends it."""
    await hsessions.session_result_return(session_id=session_id, job_id=job_id, frame_json=frame)


async def outbox_resend(*, session_id: str, job_ids: Sequence[str]) -> list[str]:
    """Put back the results of ``job_ids`` that were taken for the session but that its client
    says it never received (``session_init.awaiting``: sent on a socket that died first); the
    job ids put back. A job id the session was never sent a result for is ignored.

    The frame is the one handed over if still kept, else rebuilt from the job's record, else
    ``JOB_LOST`` (the record expired or was lost).
    """
    taken = await hsessions.session_results_taken(session_id=session_id, job_ids=job_ids)
    for job_id, frame in taken.items():
        if frame is None:
            frame = dump(await _rebuilt(job_id))
        await hsessions.session_result_return(
            session_id=session_id, job_id=job_id, frame_json=frame
        )
    if taken:
        logger.info("session %s: %d result(s) sent again on resume", session_id, len(taken))
    return list(taken)


async def _rebuilt(job_id: str) -> SessionJobResult:
    job = await hjobs.job_get(job_id=job_id)
    if job is None or not job.state.terminal:
        return _lost_frame(job_id=job_id, request_id=job.request_id if job else "")
    return result_frame(job)


async def outbox_forgo(*, session_id: str, job_id: str) -> None:
    """The session was told ``job_rejected`` for a job Redis may have created after all: it
    never gets that job's result, whatever reaches its outbox or expectations later."""
    if session_id:
        await hsessions.session_result_forgo(session_id=session_id, job_id=job_id)


async def outbox_expect(*, session_id: str, job_id: str, request_id: str = "") -> None:
    """Record ``job_id``'s result as owed to the session (HTTP submits have none: no-op).

    Call it once the job's record exists and before ``job_accepted``: from then on, the
    session's sweep makes sure the result or ``JOB_LOST`` reaches it. ``request_id`` names the
    request in a ``JOB_LOST`` answer; without it, it is read from the job's record.
    """
    if not session_id:
        return
    if not request_id:
        job = await hjobs.job_get(job_id=job_id)
        if job is None:
            return  # the caller has just created it; it is being lost, and answers itself
        request_id = job.request_id
    await hsessions.session_result_expect(
        session_id=session_id,
        job_id=job_id,
        request_id=request_id,
        check_after_ms=int(EXPECT_GRACE_S * 1000),
    )


async def outbox_sweep(*, session_id: str) -> list[str]:
    """One turn of a session's sweep: the job ids whose results now wait in its outbox (some
    of them), after checking the expectations that are due."""
    swept = await hsessions.session_outbox_sweep(
        session_id=session_id,
        pending_limit=SWEEP_PENDING,
        due_limit=SWEEP_EXPECTED,
        recheck_ms=int(EXPECT_RECHECK_S * 1000),
    )
    waiting = list(swept.pending)
    for job_id, request_id in swept.due:
        if await _expected_check(session_id=session_id, job_id=job_id, request_id=request_id):
            waiting.append(job_id)
    return waiting


async def _expected_check(*, session_id: str, job_id: str, request_id: str) -> bool:
    """Put what an expected job owes the session, if it is overdue; True if stored now."""
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        frame = _lost_frame(job_id=job_id, request_id=request_id)
        stored = await hsessions.session_result_put(
            session_id=session_id, job_id=job_id, frame_json=dump(frame)
        )
        if stored:
            logger.warning("job %s: record lost; session %s answered JOB_LOST", job_id, session_id)
        return stored
    ended_ms = job.finished_ms if job.state.terminal else None
    if ended_ms is None or time.time() * 1000 - ended_ms < EXPECT_GRACE_S * 1000:
        return False  # still running, or its own delivery is under way
    # Ended a while ago and still expected: its put never happened or the outbox was lost. A
    # result taken already is refused by its tombstone, and the put settles the expectation.
    stored = await hsessions.session_result_put(
        session_id=session_id, job_id=job_id, frame_json=dump(result_frame(job))
    )
    if stored:
        logger.warning("job %s: result put again for session %s", job_id, session_id)
    return stored


def _lost_frame(*, job_id: str, request_id: str) -> SessionJobResult:
    return SessionJobResult(
        job_id=job_id,
        # Stored with the expectation, in the same slot; a failover loses both or neither.
        request_id=request_id or job_id,
        ok=False,
        error=JobError(
            code=ErrorCode.JOB_LOST,
            message="the scheduler lost this job's state; submitting the request again is safe",
        ),
    )
