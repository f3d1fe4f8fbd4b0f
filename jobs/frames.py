"""The job frames of both peers' sockets: parse done, call one service, reply.

The node and session consumers belong to the apps below this one, so they do not import it;
``register()`` (called from ``JobsConfig.ready``) hands them these handlers through
``core.consumers.FRAME_HANDLERS``.
"""

from __future__ import annotations

from core.consumers import FRAME_HANDLERS, Handler, NodeSocket, SessionSocket
from jobs import services as jobs
from protocol import (
    JobAccepted,
    JobAck,
    JobStarted,
    JobSubmit,
    ModelNotAvailable,
    NodeJobProgress,
    NodeJobResult,
    SessionJobCancel,
)

# --- from nodes ---------------------------------------------------------------------------------


async def on_ack(node: NodeSocket, frame: JobAck) -> None:
    await jobs.job_ack(node_id=node.node_id, job_id=frame.job_id, attempt=frame.attempt)


async def on_started(node: NodeSocket, frame: JobStarted) -> None:
    await jobs.job_started(node_id=node.node_id, job_id=frame.job_id, attempt=frame.attempt)


async def on_progress(node: NodeSocket, frame: NodeJobProgress) -> None:
    await jobs.job_progress(
        node_id=node.node_id,
        job_id=frame.job_id,
        attempt=frame.attempt,
        progress=frame.progress,
        data=frame.data,
    )


async def on_result(node: NodeSocket, frame: NodeJobResult) -> None:
    await jobs.job_result(
        node_id=node.node_id,
        job_id=frame.job_id,
        attempt=frame.attempt,
        ok=frame.ok,
        result=frame.result,
        error=frame.error,
    )


async def on_model_not_available(node: NodeSocket, frame: ModelNotAvailable) -> None:
    await jobs.job_model_not_available(node_id=node.node_id, frame=frame)


# --- from sessions ------------------------------------------------------------------------------


async def on_submit(session: SessionSocket, frame: JobSubmit) -> None:
    accepted = await jobs.job_submit(
        tenant=session.tenant, session_id=session.session_id, submit=frame
    )
    await session.send_frame(
        JobAccepted(
            request_id=accepted.request_id, job_id=accepted.job_id, node_id=accepted.node_id
        )
    )
    if accepted.duplicate:
        # A duplicate of a finished job: its result may be waiting in the outbox already.
        await session.deliver(accepted.job_id)


async def on_cancel(session: SessionSocket, frame: SessionJobCancel) -> None:
    await jobs.job_cancel(tenant=session.tenant, job_id=frame.job_id)


def register() -> None:
    node_frames: dict[str, Handler] = {
        "job_ack": on_ack,
        "job_started": on_started,
        "job_progress": on_progress,
        "job_result": on_result,
        "model_not_available": on_model_not_available,
    }
    for message_type, handler in node_frames.items():
        FRAME_HANDLERS.register("node", message_type, handler)
    # A session's submits and cancels are independent of each other (each reply names its
    # request or job), so one stalled on Redis does not hold up the others, nor its results.
    FRAME_HANDLERS.register("session", "job_submit", on_submit, concurrent=True)
    FRAME_HANDLERS.register("session", "job_cancel", on_cancel, concurrent=True)
