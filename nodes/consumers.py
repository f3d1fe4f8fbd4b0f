"""``/ws/node/``: a worker machine's socket. Parses, calls one service, replies.

The frames about jobs (``job_ack``, ``job_result``, ...) are handled by ``jobs.frames``,
registered at start-up (see ``core.consumers``).
"""

from __future__ import annotations

import logging
from typing import Any

from core.consumers import PeerConsumer
from core.events import JobAssignEvent, JobCancelEvent, PeerReplacedEvent, event_send
from core.runtime import runtime_get
from hotstate.nodes import NodeCaps
from nodes import services as nodes
from protocol import CloseCode, NodeDrain, NodeHeartbeat, NodeRegister, NodeRegistered

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
            await event_send(connected.previous_channel, PeerReplacedEvent())
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

    async def on_drain(self, frame: NodeDrain) -> None:
        await nodes.node_drain_request(node_id=self.node_id, channel=self.channel_name)
        self.drained = True

    handlers = {"node_heartbeat": on_heartbeat, "node_drain": on_drain}

    # --- channel layer events ------------------------------------------------------------------

    async def job_assign(self, message: dict[str, Any]) -> None:
        await self.send_raw(JobAssignEvent.of(message).frame)

    async def job_cancel(self, message: dict[str, Any]) -> None:
        event = JobCancelEvent.of(message)
        await self.send_raw(event.frame)
        if event.owed:
            # After the frame: a job sent to this node from now on comes after the cancel.
            self.in_background(
                nodes.node_job_stopped(node_id=self.node_id, job_id=event.job_id, owed=event.owed)
            )

    async def peer_replaced(self, message: dict[str, Any]) -> None:
        logger.info(
            "node %s: a newer connection took over; closing %s", self.node_id, self.channel_name
        )
        await self.close_with(CloseCode.REPLACED)
