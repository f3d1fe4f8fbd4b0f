"""What every WebSocket peer goes through before its frames reach a service.

PROTOCOL.md, Framing: the socket is accepted, then the first frame must authenticate within
``AUTH_TIMEOUT``; frames over ``MAX_FRAME_BYTES`` close the socket with 1009; a peer over its rate
limit gets ``RATE_LIMITED`` and, persisting, 4429; every bad frame gets an ``error`` and changes
nothing. Subclasses name their peer kind, their authenticating message and a dispatch table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from protocol import (
    CloseCode,
    Error,
    ErrorCode,
    ErrorRef,
    Frame,
    Peer,
    Ping,
    Pong,
    ProtocolError,
    dump,
    parse_inbound,
)
from scheduler_project.drain import consumer_track, consumer_untrack
from scheduler_project.errors import error_reply
from scheduler_project.ratelimit import FrameLimiter, Verdict
from scheduler_project.runtime import runtime_get

logger = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Awaitable[None]]


def frame_bytes_over(raw: str | bytes, limit: int) -> bool:
    """Whether ``raw`` is longer than ``limit`` bytes on the wire (UTF-8), cheaply."""
    if isinstance(raw, bytes):
        return len(raw) > limit
    if len(raw) > limit:  # at least one byte per character
        return True
    if len(raw) * 4 <= limit:  # at most four bytes per character
        return False
    return len(raw.encode()) > limit


def ref_of(frame: Frame) -> ErrorRef:
    """The ``ref`` of an error about ``frame``: whichever of type, request_id, job_id it has."""
    return ErrorRef(
        type=getattr(frame, "type", None),
        request_id=getattr(frame, "request_id", None),
        job_id=getattr(frame, "job_id", None),
    )


class PeerConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    peer: ClassVar[Peer]
    auth_message: ClassVar[type[Frame]]
    # Message type -> handler, for authenticated peers. Ping is answered here for everyone.
    handlers: ClassVar[Mapping[str, Handler]]

    authenticated: bool = False
    closing: bool = False

    # --- life cycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        self.limiter = FrameLimiter.build(
            rate=settings.RATE_LIMIT_PER_S, burst=settings.RATE_LIMIT_BURST
        )
        await self.accept()
        self._auth_timer = asyncio.get_running_loop().call_later(
            settings.AUTH_TIMEOUT, self._on_auth_timeout
        )
        if runtime_get().draining:
            # PROTOCOL.md: an instance that stops closes with 1012, "reconnect elsewhere".
            await self.close_with(CloseCode.SERVICE_RESTART)
            return
        consumer_track(self)

    def _on_auth_timeout(self) -> None:
        if not self.authenticated and not self.closing:
            logger.info("%s peer did not authenticate within %ss", self.peer, settings.AUTH_TIMEOUT)
            self._closer = asyncio.ensure_future(self.close_with(CloseCode.UNAUTHORIZED))

    async def disconnect(self, code: int) -> None:
        self.closing = True
        self._auth_timer.cancel()
        consumer_untrack(self)
        if self.authenticated:
            await self.on_disconnect(code)

    async def close_with(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            await self.close(code=int(code))

    # --- inbound ----------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        raw = text_data if text_data is not None else bytes_data
        if raw is None or self.closing:
            return
        if frame_bytes_over(raw, settings.MAX_FRAME_BYTES):
            await self.close_with(CloseCode.MESSAGE_TOO_BIG)
            return
        verdict = self.limiter.check()
        if verdict == Verdict.DISCONNECT:
            await self.close_with(CloseCode.RATE_LIMITED)
            return
        if not self.authenticated:
            # The first frame came in time. Judging it may take longer (a slow database), and
            # it ends with the peer authenticated or the socket closed: the timer is done.
            self._auth_timer.cancel()
        try:
            frame = parse_inbound(raw, peer=self.peer)
        except ProtocolError as exc:
            await self._refuse_bad_frame(exc, rate_limited=verdict == Verdict.REFUSE)
            return
        if not self.authenticated:
            await self._authenticate(frame, raw_size=len(raw))
            return
        if verdict == Verdict.REFUSE:
            await self.on_rate_limited(frame)
            return
        await self._dispatch(frame, raw_size=len(raw))

    async def _refuse_bad_frame(self, exc: ProtocolError, *, rate_limited: bool) -> None:
        if not self.authenticated:
            await self.refuse_unauthorized("the first frame must be a valid " + self._auth_type())
        elif rate_limited:
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames", ErrorRef(**exc.ref))
        else:
            await self.send_frame(exc.to_frame())

    async def _authenticate(self, frame: Frame, *, raw_size: int) -> None:
        if not isinstance(frame, self.auth_message):
            await self.refuse_unauthorized(f"the first frame must be {self._auth_type()}")
            return
        try:
            await self.authenticate(frame)
        except Exception as exc:
            code, message = error_reply(exc)
            if code != ErrorCode.UNAUTHORIZED:
                # The peer is not at fault (e.g. DEPENDENCY_DOWN): say so, then let it retry.
                await self.send_error(code, message, ref_of(frame))
                await self.close_with(CloseCode.SERVICE_RESTART)
                return
            await self.refuse_unauthorized(message)
            return
        self.authenticated = True
        self._auth_timer.cancel()

    async def _dispatch(self, frame: Frame, *, raw_size: int) -> None:
        if isinstance(frame, Ping):
            now_ms = int(time.time() * 1000)
            await self.send_frame(Pong(ts_ms=frame.ts_ms if frame.ts_ms is not None else now_ms))
            return
        handler = self.handlers.get(frame.type)  # type: ignore[attr-defined]
        if handler is None:
            await self.send_error(ErrorCode.BAD_MESSAGE, "already authenticated", ref_of(frame))
            return
        try:
            await handler(self, frame)
        except Exception as exc:
            code, message = error_reply(exc)
            if code == ErrorCode.INTERNAL_ERROR:
                logger.exception("%s frame %s failed", self.peer, frame.type)  # type: ignore[attr-defined]
            await self.on_handler_error(frame, code, message)

    # --- hooks for subclasses -----------------------------------------------------------------

    async def authenticate(self, frame: Any) -> None:
        raise NotImplementedError

    async def on_disconnect(self, code: int) -> None:
        """Clean-up for an authenticated peer."""

    async def on_rate_limited(self, frame: Frame) -> None:
        await self.send_error(ErrorCode.RATE_LIMITED, "too many frames", ref_of(frame))

    async def on_handler_error(self, frame: Frame, code: ErrorCode, message: str) -> None:
        await self.send_error(code, message, ref_of(frame))

    # --- outbound ---------------------------------------------------------------------------

    async def send_frame(self, frame: Frame) -> None:
        if not self.closing:
            await self.send(text_data=dump(frame))

    async def send_raw(self, text: str) -> None:
        """Send a frame serialised elsewhere (events carry frames already dumped)."""
        if self.authenticated and not self.closing:
            await self.send(text_data=text)

    async def send_error(self, code: ErrorCode, message: str, ref: ErrorRef | None = None) -> None:
        await self.send_frame(Error(code=code, message=message, ref=ref))

    async def refuse_unauthorized(self, message: str) -> None:
        await self.send_error(ErrorCode.UNAUTHORIZED, message)
        await self.close_with(CloseCode.UNAUTHORIZED)

    def _auth_type(self) -> str:
        return str(self.auth_message.model_fields["type"].default)
