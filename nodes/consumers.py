"""``/ws/node/``: a worker machine's socket. Parses, calls one service, replies."""

from __future__ import annotations

import logging
from typing import Any

from hotstate.nodes import NodeCaps
from jobs import services as jobs
from jobs.delivery import layer_send
from nodes import services as nodes
from protocol import (
    CloseCode,
    JobAck,
    JobStarted,
    ModelNotAvailable,
    NodeDrain,
    NodeHeartbeat,
    NodeJobProgress,
    NodeJobResult,
    NodeRegister,
    NodeRegistered,
)
from scheduler_project.runtime import runtime_get
from scheduler_project.websocket import PeerConsumer

logger = logging.getLogger(__name__)


class NodeConsumer(PeerConsumer):
    peer = "node"
    auth_message = NodeRegister

    node_id: str = ""
    caps: NodeCaps | None = None
    drained: bool = False

    async def authenticate(self, frame: NodeRegister) -> None:
        runtime = runtime_get()
        connected = await nodes.node_connect(
            token=frame.token, frame=frame, channel=self.channel_name
        )
        self.node_id, self.caps = connected.node_id, connected.caps
        self.drained = connected.drained
        if connected.previous_channel:
            await layer_send(connected.previous_channel, {"type": "peer.replaced"})
        await self.send_frame(
            NodeRegistered(
                node_id=self.node_id,
                heartbeat_interval_ms=runtime.heartbeat_interval_ms,
                instance_id=runtime.instance_id,
            )
        )

    async def on_disconnect(self, code: int) -> None:
        if runtime_get().draining:
            # The node reconnects to another instance and takes its presence over there; taking
            # it offline here would fail its running jobs over for nothing.
            return
        await nodes.node_disconnect(node_id=self.node_id, channel=self.channel_name)

    # --- frames from the node ------------------------------------------------------------------

    async def on_heartbeat(self, frame: NodeHeartbeat) -> None:
        assert self.caps is not None
        caps = await nodes.node_beat(
            node_id=self.node_id,
            channel=self.channel_name,
            frame=frame,
            caps=self.caps,
            drained=self.drained,
        )
        if caps is None:
            await self.close_with(CloseCode.REPLACED)
            return
        self.caps = caps

    async def on_ack(self, frame: JobAck) -> None:
        await jobs.job_ack(node_id=self.node_id, job_id=frame.job_id, attempt=frame.attempt)

    async def on_started(self, frame: JobStarted) -> None:
        await jobs.job_started(node_id=self.node_id, job_id=frame.job_id, attempt=frame.attempt)

    async def on_progress(self, frame: NodeJobProgress) -> None:
        await jobs.job_progress(
            node_id=self.node_id,
            job_id=frame.job_id,
            attempt=frame.attempt,
            progress=frame.progress,
            data=frame.data,
        )

    async def on_result(self, frame: NodeJobResult) -> None:
        await jobs.job_result(
            node_id=self.node_id,
            job_id=frame.job_id,
            attempt=frame.attempt,
            ok=frame.ok,
            result=frame.result,
            error=frame.error,
        )

    async def on_model_not_available(self, frame: ModelNotAvailable) -> None:
        await jobs.job_model_not_available(node_id=self.node_id, frame=frame)

    async def on_drain(self, frame: NodeDrain) -> None:
        await nodes.node_drain_request(node_id=self.node_id, channel=self.channel_name)
        self.drained = True

    handlers = {
        "node_heartbeat": on_heartbeat,
        "job_ack": on_ack,
        "job_started": on_started,
        "job_progress": on_progress,
        "job_result": on_result,
        "model_not_available": on_model_not_available,
        "node_drain": on_drain,
    }

    # --- channel layer events ------------------------------------------------------------------

    async def job_assign(self, event: dict[str, Any]) -> None:
        await self.send_raw(event["frame"])

    async def job_cancel(self, event: dict[str, Any]) -> None:
        await self.send_raw(event["frame"])

    async def peer_replaced(self, event: dict[str, Any]) -> None:
        logger.info(
            "node %s: a newer connection took over; closing %s", self.node_id, self.channel_name
        )
        await self.close_with(CloseCode.REPLACED)
