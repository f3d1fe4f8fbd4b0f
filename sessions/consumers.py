"""``/ws/session/``: a client's socket. Parses, calls one service, replies.

``job_submit`` and ``job_cancel`` are handled by ``jobs.frames``, registered at start-up (see
``core.consumers``); this consumer turns their refusals into ``job_rejected`` and sends the
results that wait in the session's outbox.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings

from core.consumers import PeerConsumer, ref_of
from core.events import JobProgressEvent, PeerReplacedEvent, SessionDeliverEvent, event_send
from core.runtime import runtime_get
from protocol import (
    REJECT_CODES,
    CloseCode,
    ErrorCode,
    Frame,
    JobRejected,
    JobSubmit,
    SessionInit,
    SessionReady,
)
from sessions import services as sessions
from sessions.delivery import outbox_pending, outbox_take

logger = logging.getLogger(__name__)


class SessionConsumer(PeerConsumer):
    peer = "session"
    auth_message = SessionInit

    session_id: str = ""
    tenant: str = ""
    _renewer: asyncio.Task[None] | None = None
    _delivery_lock: asyncio.Lock | None = None

    async def authenticate(self, frame: SessionInit) -> None:
        runtime = runtime_get()
        opened = await sessions.session_open(
            key=frame.api_key,
            requested_session_id=frame.session_id,
            channel=self.channel_name,
            instance_id=runtime.instance_id,
        )
        self.session_id, self.tenant = opened.session_id, opened.tenant
        if opened.previous_channel and opened.previous_channel != self.channel_name:
            await event_send(opened.previous_channel, PeerReplacedEvent())
        self.authenticated = True
        self._renewer = asyncio.ensure_future(self._keep_session())
        await self.send_frame(
            SessionReady(session_id=self.session_id, instance_id=runtime.instance_id)
        )
        # Results that finished while the session was away, after session_ready.
        for job_id in await outbox_pending(session_id=self.session_id):
            await self.deliver(job_id)

    async def on_disconnect(self, code: int) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await sessions.session_detach(session_id=self.session_id, channel=self.channel_name)

    async def _keep_session(self) -> None:
        """Renew the session while its socket is open.

        Its keys (owner, record, outbox) expire SESSION_RESUME_TTL after the last renewal, so
        without this a session connected for longer would lose its results and its resume.
        Losing the ownership means another socket resumed it: close this one with 4409.
        """
        while not self.closing:
            await asyncio.sleep(settings.SESSION_RESUME_TTL / 3)
            try:
                owned = await sessions.session_hold(
                    session_id=self.session_id, channel=self.channel_name
                )
            except Exception:
                logger.warning("session %s: renewal failed; retrying", self.session_id)
                continue
            if not owned:
                logger.info("session %s: no longer owned by %s", self.session_id, self.channel_name)
                await self.close_with(CloseCode.REPLACED)
                return

    # --- refusals ---------------------------------------------------------------------------

    async def on_handler_error(self, frame: Frame, code: ErrorCode, message: str) -> None:
        if isinstance(frame, JobSubmit) and code in REJECT_CODES:
            await self.send_frame(
                JobRejected(request_id=frame.request_id, code=code, message=message)
            )
            return
        await self.send_error(code, message, ref_of(frame))

    async def on_rate_limited(self, frame: Frame) -> None:
        await self.on_handler_error(frame, ErrorCode.RATE_LIMITED, "too many frames")

    # --- channel layer events ------------------------------------------------------------------

    async def session_deliver(self, message: dict[str, Any]) -> None:
        await self.deliver(SessionDeliverEvent.of(message).job_id)

    async def job_progress(self, message: dict[str, Any]) -> None:
        await self.send_raw(JobProgressEvent.of(message).frame)

    async def peer_replaced(self, message: dict[str, Any]) -> None:
        logger.info("session %s resumed elsewhere; closing %s", self.session_id, self.channel_name)
        await self.close_with(CloseCode.REPLACED)

    def _delivery(self) -> asyncio.Lock:
        if self._delivery_lock is None:
            self._delivery_lock = asyncio.Lock()
        return self._delivery_lock

    async def close_with(self, code: int) -> None:
        # A result already taken from the outbox goes out before the socket closes (a drain's
        # 1012 or a resume's 4409 from another task): taken and unsent, it would be lost.
        async with self._delivery():
            await super().close_with(code)

    async def deliver(self, job_id: str) -> None:
        """Take the job's result from the outbox, if it waits there, and send it."""
        async with self._delivery():
            if self.closing:
                return
            frame = await outbox_take(session_id=self.session_id, job_id=job_id)
            if frame is not None:
                await self.send_raw(frame)
