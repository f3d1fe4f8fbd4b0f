"""Getting a job's progress and final result to the sessions that submitted it.

The job life cycle puts results in (``result_deliver_to``); the session's socket takes them
out (``outbox_take``), at once when told or after a resume. A session is reached through its
owner key (the channel of the consumer holding its socket). A final result is first stored in
the session's outbox (Redis, kept for resume), then the owner is told to take it; taking is
atomic, so each session sends it once even if it resumed on another instance meanwhile.
Progress is best effort: sessions away when it happens miss it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.events import Event, SessionDeliverEvent, event_send
from core.state import STATE
from hotstate import sessions as hsessions
from hotstate.jobs import JobState, JobView
from protocol import JobError, SessionJobResult, dump

OWNER_TTL_S = 1.0
MAX_CACHED_OWNERS = 100_000


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


async def outbox_pending(*, session_id: str) -> list[str]:
    """Job ids whose final results wait in the session's outbox."""
    return await hsessions.session_results_pending(session_id=session_id)


async def outbox_take(*, session_id: str, job_id: str) -> str | None:
    """Take a waiting result (the ``job_result`` frame) so that exactly one socket sends it."""
    return await hsessions.session_result_take(session_id=session_id, job_id=job_id)
