"""What every WebSocket peer goes through before its frames reach a service.

PROTOCOL.md, Framing: the socket is accepted, then the first frame must authenticate within
``AUTH_TIMEOUT``; frames over ``MAX_FRAME_BYTES`` close the socket with 1009; a peer over its rate
limit gets ``RATE_LIMITED`` and, persisting, 4429; every bad frame gets an ``error`` and changes
nothing. Subclasses name their peer kind, their authenticating message and a dispatch table of
their own frames.

A frame about a job (``job_ack``, ``job_submit``, ...) is handled by the app that owns the job
life cycle, which sits above the apps that own the sockets: it registers its handlers in
``FRAME_HANDLERS`` at start-up instead of being imported by the consumers, so imports point one
way. A test (``tests/test_frame_handlers.py``) checks that every inbound type has a handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ClassVar, Protocol

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core.errors import error_reply
from core.ratelimit import FrameLimiter, Verdict
from core.runtime import runtime_get
from core.state import STATE
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

logger = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Awaitable[None]]


class NodeSocket(Protocol):
    """What a handler registered for node frames may use of the node's consumer."""

    node_id: str


class SessionSocket(Protocol):
    """What a handler registered for session frames may use of the session's consumer."""

    tenant: str
    session_id: str

    async def send_frame(self, frame: Frame) -> None: ...

    async def deliver(self, job_id: str) -> bool:
        """Take the job's result from the session's outbox, if it waits there, and send it;
        False if that failed (the sweep tries again)."""


class FrameHandlers:
    """Handlers that apps register for a peer kind's frames, by message type (start-up only).

    A ``concurrent`` handler runs in a task of its own, so that one slow frame (a Redis primary
    stalled for seconds) does not hold up the socket's next frames, nor the results delivered to
    it meanwhile. Only frames whose order does not matter may be concurrent.
    """

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._concurrent: set[tuple[str, str]] = set()

    def register(
        self, peer: Peer, message_type: str, handler: Handler, *, concurrent: bool = False
    ) -> None:
        if self._handlers.get((peer, message_type), handler) is not handler:
            raise ValueError(f"{peer} frame {message_type!r} already has a handler")
        self._handlers[(peer, message_type)] = handler
        if concurrent:
            self._concurrent.add((peer, message_type))

    def get(self, peer: Peer, message_type: str) -> Handler | None:
        return self._handlers.get((peer, message_type))

    def concurrent(self, peer: Peer, message_type: str) -> bool:
        return (peer, message_type) in self._concurrent


FRAME_HANDLERS = FrameHandlers()
# A frame whose handling (and reply) takes longer than this is logged: a stalled Redis, most
# likely, past what SUBMIT_DEADLINE_S should allow.
SLOW_FRAME_S = 8.0
# Concurrent frames one socket may have in flight before it stops reading (backpressure).
MAX_CONCURRENT_FRAMES = 64
# Tasks of concurrent frames, held until they end (the event loop keeps only weak references).
_in_flight: set[asyncio.Future[None]] = set()


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


class LiveSockets(weakref.WeakSet["PeerConsumer"]):
    """The process's open sockets (a part of ``STATE``): a drain closes each of them."""


def live_sockets() -> LiveSockets:
    return STATE.part(LiveSockets)


class PeerConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    peer: ClassVar[Peer]
    auth_message: ClassVar[type[Frame]]
    # Message type -> handler of the subclass's own frames, for authenticated peers; then the
    # registered ones. Ping is answered here for everyone.
    handlers: ClassVar[Mapping[str, Handler]] = {}

    authenticated: bool = False
    closing: bool = False

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the message's handler, without channels' ``aclose_old_connections()`` first.

        Channels runs that on every message, a hop to a thread that Django's request cycle needs
        and a socket does not: these consumers reach the database only through
        ``database_sync_to_async``, which closes old connections itself. Measured under a storm
        of ``model_not_available`` frames, the hop was 28 % of a daphne's busy time.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

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
        live_sockets().add(self)

    def _on_auth_timeout(self) -> None:
        if not self.authenticated and not self.closing:
            logger.info("%s peer did not authenticate within %ss", self.peer, settings.AUTH_TIMEOUT)
            self._closer = asyncio.ensure_future(self.close_with(CloseCode.UNAUTHORIZED))

    async def disconnect(self, code: int) -> None:
        self.closing = True
        self._auth_timer.cancel()
        live_sockets().discard(self)
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
            await self._authenticate(frame)
            return
        if verdict == Verdict.REFUSE:
            await self.on_rate_limited(frame)
            return
        await self._dispatch(frame)

    async def _refuse_bad_frame(self, exc: ProtocolError, *, rate_limited: bool) -> None:
        if not self.authenticated:
            await self.refuse_unauthorized("the first frame must be a valid " + self._auth_type())
        elif rate_limited:
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames", ErrorRef(**exc.ref))
        else:
            await self.send_frame(exc.to_frame())

    async def _authenticate(self, frame: Frame) -> None:
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

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Ping):
            now_ms = int(time.time() * 1000)
            await self.send_frame(Pong(ts_ms=frame.ts_ms if frame.ts_ms is not None else now_ms))
            return
        kind: str = frame.type  # type: ignore[attr-defined]
        handler = self.handlers.get(kind) or FRAME_HANDLERS.get(self.peer, kind)
        if handler is None:
            await self.send_error(ErrorCode.BAD_MESSAGE, "already authenticated", ref_of(frame))
            return
        if FRAME_HANDLERS.concurrent(self.peer, kind):
            await self._spawn(handler, frame)
        else:
            await self._handle(handler, frame)

    async def _handle(self, handler: Handler, frame: Frame) -> None:
        started = time.monotonic()
        try:
            await handler(self, frame)
        except Exception as exc:
            code, message = error_reply(exc)
            if code == ErrorCode.INTERNAL_ERROR:
                logger.exception("%s frame %s failed", self.peer, frame.type)  # type: ignore[attr-defined]
            await self.on_handler_error(frame, code, message)
        took = time.monotonic() - started
        if took > SLOW_FRAME_S:
            logger.warning("%s frame %s took %.1f s", self.peer, ref_of(frame), took)

    async def _spawn(self, handler: Handler, frame: Frame) -> None:
        """Handle ``frame`` in a task of its own; past MAX_CONCURRENT_FRAMES in flight on this
        socket, wait for one to end first (the socket's reading slows down: backpressure).

        A task outlives its socket's close: its work (a submit) is bounded by the Redis call
        timeouts and its reply goes nowhere.
        """
        slots = self.__dict__.get("_frame_slots")
        if slots is None:
            slots = self._frame_slots = asyncio.Semaphore(MAX_CONCURRENT_FRAMES)
        await slots.acquire()
        task = asyncio.ensure_future(self._handle(handler, frame))
        _in_flight.add(task)

        def done(task: asyncio.Future[None]) -> None:
            _in_flight.discard(task)
            slots.release()

        task.add_done_callback(done)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own, held until it ends (it may outlive the socket):
        for an event's Redis calls, which must not hold up the socket's frames meanwhile (the
        consumer handles its frames and events one at a time)."""
        task = asyncio.ensure_future(work)
        _in_flight.add(task)
        task.add_done_callback(_in_flight.discard)

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
