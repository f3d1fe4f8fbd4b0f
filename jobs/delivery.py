"""Getting frames to the consumer that holds a socket, wherever it runs.

Nodes are reached through the channel named in their presence, sessions through their owner
key. A final result is first stored in the session's outbox (Redis, kept for resume), then the
owner is told to take it; taking is atomic, so each session sends it once even if it resumed on
another instance meanwhile. Progress is best effort: sessions away when it happens miss it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from clusterlayer import ProcessGone
from hotstate import jobs as hjobs
from hotstate import nodes as hnodes
from hotstate import sessions as hsessions
from hotstate.jobs import JobState, JobView
from protocol import JobError, NodeJobCancel, SessionJobResult, dump

logger = logging.getLogger(__name__)

ROUTE_TTL_S = 1.0
OWNER_TTL_S = 1.0


async def layer_send(channel: str, event: Mapping[str, Any]) -> bool:
    """Send ``event`` to ``channel``; False if the channel is full (the receiver is stuck)."""
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    try:
        await layer.send(channel, dict(event))
    except ProcessGone:
        # The socket's process stopped (a drained or crashed instance): its peers reconnect
        # elsewhere; results wait in outboxes and jobs are placed again by the caller.
        logger.debug("channel %s is gone; %s not sent", channel, event.get("type"))
        return False
    except ChannelFull:
        logger.warning("channel %s is full; %s dropped", channel, event.get("type"))
        return False
    return True


async def node_send(*, channel: str, event: Mapping[str, Any]) -> bool:
    return await layer_send(channel, event)


async def node_cancel(*, node_id: str, frame: NodeJobCancel) -> None:
    """Tell the node's socket to send ``job_cancel``; a node offline now needs no telling."""
    channel = await hnodes.node_channel(node_id=node_id)
    if channel:
        await layer_send(
            channel, {"type": "job.cancel", "job_id": frame.job_id, "frame": dump(frame)}
        )


# --- sessions -----------------------------------------------------------------------------------

_owners: dict[str, tuple[float, str | None]] = {}


async def session_channel(session_id: str) -> str | None:
    """The channel holding the session's socket now (cached for a second), or None."""
    cached = _owners.get(session_id)
    now = time.monotonic()
    if cached is not None and now - cached[0] < OWNER_TTL_S:
        return cached[1]
    channel = await hsessions.session_owner_get(session_id=session_id)
    if len(_owners) > 100_000:
        _owners.clear()
    _owners[session_id] = (now, channel)
    return channel


def session_channel_forget(session_id: str) -> None:
    _owners.pop(session_id, None)


def _real(session_ids: Iterable[str]) -> list[str]:
    # A job submitted over HTTP has no session: its submit subscribed the empty id, which names
    # no session key (and cannot be made into one).
    return [session_id for session_id in session_ids if session_id]


async def sessions_notify(*, session_ids: Iterable[str], event: Mapping[str, Any]) -> None:
    for session_id in _real(session_ids):
        channel = await session_channel(session_id)
        if channel:
            await layer_send(channel, event)


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
            await layer_send(channel, {"type": "session.deliver", "job_id": job.job_id})


# --- routes for progress ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    request_id: str
    node_id: str | None
    attempt: int
    subscribers: frozenset[str]
    fetched: float
    ended: bool = False


_routes: dict[str, Route] = {}


async def route_get(*, job_id: str) -> Route | None:
    """Where a job's progress goes: read once a second at most per job, per process."""
    route = _routes.get(job_id)
    now = time.monotonic()
    if route is not None and now - route.fetched < ROUTE_TTL_S:
        return route
    job = await hjobs.job_get(job_id=job_id)
    if job is None:
        _routes.pop(job_id, None)
        return None
    if len(_routes) > 100_000:
        _routes.clear()
    route = Route(
        job.request_id, job.node_id, job.attempt, job.subscribers, now, job.state.terminal
    )
    _routes[job_id] = route
    return route


def route_forget(*, job_id: str) -> None:
    _routes.pop(job_id, None)
