"""``/ws/session/``: a client's socket. Parses, calls one service, replies.

``job_submit`` and ``job_cancel`` are handled by ``jobs.frames``, registered at start-up (see
``core.consumers``); this consumer turns their refusals into ``job_rejected`` and sends the
results that wait in the session's outbox: when told (``session.deliver``), after a resume, and
from a sweep every ``SWEEP_INTERVAL_S`` while the socket is open, so a notice the channel layer
dropped costs a second, not the result.
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
from sessions import delivery
from sessions import services as sessions
from sessions.delivery import outbox_resend, outbox_return, outbox_sweep, outbox_take

logger = logging.getLogger(__name__)

# A resume sends the whole outbox, a page (delivery.SWEEP_PENDING) at a time, up to this many.
MAX_SWEEP_PAGES = 1000


class SessionConsumer(PeerConsumer):
    peer = "session"
    auth_message = SessionInit

    session_id: str = ""
    tenant: str = ""
    _renewer: asyncio.Task[None] | None = None
    _delivery_lock: asyncio.Lock | None = None
    # Takes whose answer did not come (job_id -> token), and how many tokens were drawn.
    _unsure: dict[str, str] | None = None
    _takes_drawn: int = 0
    # Results the channel layer said wait in the outbox, and the task delivering them.
    _noticed: set[str] | None = None
    _deliverer: asyncio.Task[None] | None = None

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
        if frame.awaiting and opened.session_id == frame.session_id:
            # Results sent on the old socket that never reached the client go out again. A
            # failure fails the resume (the client resumes again, naming them again).
            await outbox_resend(session_id=self.session_id, job_ids=frame.awaiting)
        self.authenticated = True
        self._renewer = asyncio.ensure_future(self._keep_session())
        await self.send_frame(
            SessionReady(session_id=self.session_id, instance_id=runtime.instance_id)
        )
        # Results that finished while the session was away, after session_ready; and JOB_LOST
        # for jobs whose record vanished meanwhile.
        await self.sweep(until_empty=True)

    async def on_disconnect(self, code: int) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        # The deliverer is left to finish: a frame it has taken goes out or back (it checks
        # ``closing`` under the delivery lock), where a cancel could drop it.
        await self._put_back_unsure()
        await sessions.session_detach(session_id=self.session_id, channel=self.channel_name)

    async def _keep_session(self) -> None:
        """Renew and sweep the session while its socket is open.

        Its keys (owner, record, outbox) expire SESSION_RESUME_TTL after the last renewal, so
        without renewals a session connected for longer would lose its results and its resume.
        Losing the ownership means another socket resumed it: close this one with 4409. Between
        renewals, the outbox is swept every SWEEP_INTERVAL_S.
        """
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + settings.SESSION_RESUME_TTL / 3
        while not self.closing:
            await asyncio.sleep(min(delivery.SWEEP_INTERVAL_S, settings.SESSION_RESUME_TTL / 3))
            if loop.time() >= renew_at:
                renewed = await self._renew()
                if renewed is False:
                    return
                if renewed:
                    renew_at = loop.time() + settings.SESSION_RESUME_TTL / 3
            await self.sweep()

    async def _renew(self) -> bool | None:
        """True: renewed; False: replaced (closed with 4409); None: failed, try again soon."""
        try:
            owned = await sessions.session_hold(
                session_id=self.session_id, channel=self.channel_name
            )
        except Exception:
            logger.warning("session %s: renewal failed; retrying", self.session_id)
            return None
        if not owned:
            logger.info("session %s: no longer owned by %s", self.session_id, self.channel_name)
            await self.close_with(CloseCode.REPLACED)
            return False
        return True

    async def sweep(self, *, until_empty: bool = False) -> None:
        """Send what waits in the outbox, a bounded page at a time (all of it: ``until_empty``).

        Takes that failed before are repeated first. A failure is logged and left to the next
        turn.
        """
        try:
            if not await self._retake():
                return
            for _ in range(MAX_SWEEP_PAGES if until_empty else 1):
                if self.closing:
                    return
                waiting = await outbox_sweep(session_id=self.session_id)
                for job_id in waiting:
                    if not await self._deliver(job_id):
                        return
                if len(waiting) < delivery.SWEEP_PENDING:
                    return
        except Exception:
            logger.warning("session %s: outbox sweep failed", self.session_id, exc_info=True)

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
        """A result waits in the outbox: take and send it from a task of this socket's.

        Not here: the consumer handles its frames and its events one at a time, so a take that
        a stalled Redis holds for seconds would hold up the session's submits meanwhile (they
        went unanswered for over 10 s with the whole cluster frozen).
        """
        if self._noticed is None:
            self._noticed = set()
        self._noticed.add(SessionDeliverEvent.of(message).job_id)
        if self._deliverer is None or self._deliverer.done():
            self._deliverer = asyncio.ensure_future(self._deliver_noticed(self._noticed))

    async def _deliver_noticed(self, noticed: set[str]) -> None:
        """Deliver the noticed results one by one. After a take Redis did not answer, the rest
        is left to the sweep: the results wait in the outbox, and the failed take is repeated
        with its token."""
        while noticed:
            if not await self.deliver(noticed.pop()):
                noticed.clear()

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

    async def deliver(self, job_id: str) -> bool:
        """Take the job's result from the outbox, if it waits there, and send it; False if that
        failed.

        Never raises (it runs from channel-layer events, whose exceptions end the consumer): a
        take that failed is repeated by the next sweep turn, anything else is logged.
        """
        try:
            return await self._deliver(job_id)
        except Exception:
            logger.exception("session %s: delivery of job %s failed", self.session_id, job_id)
            return False

    def _unsure_takes(self) -> dict[str, str]:
        if self._unsure is None:
            self._unsure = {}
        return self._unsure

    def _token(self, job_id: str) -> str:
        """The token of the next take of ``job_id``: the one of its failed take, if any (only
        the same token gets that take's frame), else a fresh one, never used before."""
        token = self._unsure_takes().get(job_id)
        if token is None:
            self._takes_drawn += 1
            token = f"{self.channel_name}#{self._takes_drawn}"
        return token

    async def _deliver(self, job_id: str) -> bool:
        """Take and send; False if Redis did not answer the take.

        The take may have run on the server even so (a timeout while the server was frozen):
        its token stays in ``_unsure`` from before the call until an answer, so that the next
        sweep turn (or the socket's close) repeats it with the same token and gets the frame
        back. The socket can still close during the take: the client's own close
        (``disconnect`` does not wait for this lock) while the sweep delivers. The frame then
        goes back to the outbox for the session's next socket.
        """
        async with self._delivery():
            if self.closing:
                return True
            unsure = self._unsure_takes()
            token = unsure[job_id] = self._token(job_id)
            try:
                frame = await outbox_take(session_id=self.session_id, job_id=job_id, token=token)
            except Exception as exc:
                logger.warning(
                    "session %s: take of job %s failed (%s); repeating it at the next sweep",
                    self.session_id,
                    job_id,
                    exc,
                )
                return False
            if frame is not None and self.closing:
                await self._put_back(job_id, token, frame)
                return True
            del unsure[job_id]
            if frame is not None:
                await self.send_raw(frame)
            return True

    async def _retake(self) -> bool:
        """Repeat the takes that failed, each with its token; False if Redis still fails."""
        for job_id in list(self._unsure_takes()):
            if not await self._deliver(job_id):
                return False
        return True

    async def _put_back(self, job_id: str, token: str, frame: str) -> bool:
        """Return a frame taken but not sent to the outbox; False (still unsure) on failure."""
        try:
            await outbox_return(session_id=self.session_id, job_id=job_id, frame=frame)
        except Exception as exc:
            logger.warning(
                "session %s: putting back job %s failed (%s)", self.session_id, job_id, exc
            )
            return False
        self._unsure_takes().pop(job_id, None)
        return True

    async def _put_back_unsure(self) -> None:
        """The socket closed: repeat its failed takes and put back what they got, so the
        session's next socket sends it. Stops at the first failure (Redis still down); the
        frames not put back stay with this socket's tokens and are lost with it."""
        async with self._delivery():
            unsure = self._unsure_takes()
            for job_id, token in list(unsure.items()):
                try:
                    frame = await outbox_take(
                        session_id=self.session_id, job_id=job_id, token=token
                    )
                except Exception as exc:
                    logger.warning(
                        "session %s: closing with %d unsure takes; Redis fails (%s)",
                        self.session_id,
                        len(unsure),
                        exc,
                    )
                    return
                if frame is None:
                    del unsure[job_id]
                elif not await self._put_back(job_id, token, frame):
                    return
