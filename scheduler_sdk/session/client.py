"""``SessionClient``: a session's life cycle, its connection and the frames it sends and gets.

The requests waiting for an answer (``pending``) and what arrived for the caller (``inbox``)
are its collaborators; the reconnect loop is ``scheduler_sdk.reconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.backoff import Backoff
from scheduler_sdk.errors import Replaced, SdkError, Unauthorized
from scheduler_sdk.reconnect import stay_connected
from scheduler_sdk.session.inbox import Inbox, SessionEvent
from scheduler_sdk.session.pending import PendingRequests, Reply
from scheduler_sdk.session.stats import SessionStats

logger = logging.getLogger(__name__)

# How many of the latest results' job ids are remembered (a result may overtake job_accepted).
MAX_ENDED_KEPT = 10_000


class SessionClosed(SdkError):
    """The client was closed."""


class SessionClient:
    """A session: submit jobs, follow their progress and results, cancel them.

    ``on_progress``, ``on_result`` and ``on_error`` are plain callables run on the reader task;
    they must not block. ``events()`` is the async alternative. Results are also kept (the
    latest ``MAX_KEPT_RESULTS`` unclaimed ones) for ``result(job_id)``.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        session_id: str | None = None,
        on_progress: Callable[[p.SessionJobProgress], None] | None = None,
        on_result: Callable[[p.SessionJobResult], None] | None = None,
        on_error: Callable[[p.Error], None] | None = None,
        backoff: Backoff | None = None,
        ready_timeout_s: float = 10.0,
        connect_kwargs: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self.session_id = session_id
        self.instance_id: str | None = None
        self.resumed = False
        """Whether the last ``session_ready`` continued the session asked for."""
        self.stats = SessionStats()
        self._on_progress = on_progress
        self._on_result = on_result
        self._on_error = on_error
        self._backoff = backoff or Backoff()
        self._ready_timeout_s = ready_timeout_s
        self._connect_kwargs: dict[str, Any] = {"compression": None, **(connect_kwargs or {})}
        self._rng = rng or random.Random()

        # Accepted jobs without a result yet, oldest first: named in a resume's session_init
        # (``awaiting``), so a result sent on a connection that died is sent again.
        self._awaiting: dict[str, None] = {}
        # The latest results' job ids: a result may overtake its job_accepted.
        self._ended: dict[str, None] = {}
        self._ws: ClientConnection | None = None  # set while ready
        self._live_ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._failure: SdkError | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._pending = PendingRequests(self.stats)
        self._inbox = Inbox()

    # --- life cycle -------------------------------------------------------------------------

    async def connect(self, *, timeout_s: float | None = 30.0) -> str:
        """Connect and authenticate; the ``session_id`` once ``session_ready`` arrived."""
        if self._run_task is not None:
            raise RuntimeError("this client is already connected")
        self._run_task = asyncio.create_task(self._run(), name=f"session-client {self.url}")
        self._run_task.add_done_callback(_retrieve)
        await self._wait_ready(timeout_s)
        assert self.session_id is not None
        return self.session_id

    async def close(self) -> None:
        """Close the connection; waiting calls fail with ``SessionClosed``."""
        self._closing.set()
        ws = self._live_ws
        if ws is not None:
            await ws.close(1000, "client closing")
        if self._run_task is not None:
            with contextlib.suppress(SdkError):
                await self._run_task
        self._fail_all(SessionClosed("the session client is closed"))

    async def __aenter__(self) -> SessionClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- requests ---------------------------------------------------------------------------

    async def submit(
        self,
        request_id: str,
        service: str | p.ServiceRef,
        payload: Mapping[str, Any],
        *,
        features: Iterable[str] | None = None,
        timeout_ms: int | None = None,
        reply_timeout_s: float | None = 30.0,
    ) -> Reply:
        """Submit a job; the ``job_accepted`` or ``job_rejected`` for it.

        Raises ``RequestFailed`` when the scheduler answers with an ``error`` about this
        ``request_id``. While disconnected the submit waits and is sent on the next connection.
        """
        self._check_usable()
        if self._pending.waiting(request_id):
            raise ValueError(f"request {request_id!r} is already waiting for its reply")
        ref = service if isinstance(service, p.ServiceRef) else p.ServiceRef(id=service)
        frame = p.JobSubmit(
            request_id=request_id,
            service=ref,
            features=None if features is None else list(features),
            payload=dict(payload),
            timeout_ms=timeout_ms,
        )
        pending = self._pending.add(request_id, p.dump(frame))
        try:
            await self._pending.send(pending, self._ws)
            return await asyncio.wait_for(asyncio.shield(pending.reply), reply_timeout_s)
        finally:
            self._pending.discard(request_id, pending)

    async def cancel(self, job_id: str, *, timeout_s: float | None = 30.0) -> None:
        """Ask to cancel ``job_id``; its ``job_result{CANCELLED}`` (or an error) follows."""
        await self._send_when_ready(p.SessionJobCancel(job_id=job_id), timeout_s)

    async def result(self, job_id: str, *, timeout_s: float | None = None) -> p.SessionJobResult:
        """The final ``job_result`` of ``job_id`` (at once if it already arrived)."""
        return await self._inbox.result(job_id, timeout_s, check_usable=self._check_usable)

    def events(self) -> AsyncIterator[SessionEvent]:
        """Progress, results and errors from now on, in arrival order, until ``close()``."""
        return self._inbox.events()

    async def ping(self, *, timeout_s: float | None = 10.0) -> float:
        """Round-trip time in seconds of an application-level ``ping``/``pong``."""
        ts_ms, pong = self._pending.ping()
        started = time.monotonic()
        try:
            await self._send_when_ready(p.Ping(ts_ms=ts_ms), timeout_s)
            await asyncio.wait_for(pong, timeout_s)
        finally:
            self._pending.end_ping(ts_ms)
        return time.monotonic() - started

    # --- connection -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await stay_connected(
                self._connection,
                peer="session",
                url=self.url,
                ident=lambda: self.session_id,
                stop=self._closing,
                backoff=self._backoff,
                rng=self._rng,
            )
        except SdkError as exc:
            self._fail_all(exc)
            raise

    async def _connection(self) -> bool:
        ready: p.SessionReady | None = None
        async with connect(self.url, **self._connect_kwargs) as ws:
            self._live_ws = ws
            if self._closing.is_set():  # close() ran while this connection was being opened
                self._live_ws = None
                await ws.close(1000, "client closing")
                return False
            try:
                asked = self.session_id
                awaiting = list(self._awaiting)[: p.MAX_AWAITING] if asked else []
                init = p.SessionInit(
                    api_key=self._api_key, session_id=asked, awaiting=awaiting or None
                )
                await ws.send(p.dump(init))
                ready = await self._await_ready(ws)
                if ready is not None:
                    await self._serve(ws, ready, asked)
            except ConnectionClosed:
                pass
            finally:
                self._live_ws = None
        if ws.close_code == p.CloseCode.UNAUTHORIZED:
            raise Unauthorized(f"the scheduler refused this API key (close 4401) {ws.close_reason}")
        if ws.close_code == p.CloseCode.REPLACED:
            raise Replaced(f"session {self.session_id} was resumed elsewhere (close 4409)")
        logger.info("session %s disconnected (close %s)", self.session_id, ws.close_code)
        return ready is not None

    async def _await_ready(self, ws: ClientConnection) -> p.SessionReady | None:
        async with asyncio.timeout(self._ready_timeout_s):
            while True:
                frame = self._parse(await ws.recv())
                if isinstance(frame, p.SessionReady):
                    return frame
                if isinstance(frame, p.Error):
                    logger.warning("session refused: %s %s", frame.code, frame.message)

    async def _serve(self, ws: ClientConnection, ready: p.SessionReady, asked: str | None) -> None:
        self.session_id = ready.session_id
        self.instance_id = ready.instance_id
        self.resumed = asked is not None and asked == ready.session_id
        self.stats.connects += 1
        if self.resumed:
            self.stats.resumed += 1
        else:
            self.stats.new_sessions += 1
            if asked is not None:
                logger.warning("session %s could not be resumed; now %s", asked, ready.session_id)
        # Replies to submits sent on the old connection may have been lost with it.
        await self._pending.resend(ws)
        self._ws = ws
        self._ready.set()
        try:
            async for raw in ws:
                self._on_frame(raw)
        finally:
            self._ws = None
            self._ready.clear()

    def _parse(self, raw: str | bytes) -> p.Frame | None:
        try:
            return p.parse_outbound(raw, peer="session")
        except p.ProtocolError as exc:
            logger.warning("session ignored a bad frame from the scheduler: %s", exc.message)
            return None

    def _on_frame(self, raw: str | bytes) -> None:
        frame = self._parse(raw)
        if isinstance(frame, p.JobAccepted | p.JobRejected):
            if isinstance(frame, p.JobAccepted) and frame.job_id not in self._ended:
                self._awaiting[frame.job_id] = None
            self._pending.answer(frame)
        elif isinstance(frame, p.SessionJobProgress):
            self.stats.progress += 1
            _call(self._on_progress, frame)
            self._inbox.publish(frame)
        elif isinstance(frame, p.SessionJobResult):
            self._awaiting.pop(frame.job_id, None)
            self._ended[frame.job_id] = None
            if len(self._ended) > MAX_ENDED_KEPT:
                del self._ended[next(iter(self._ended))]
            self.stats.results += 1
            self._inbox.keep(frame)
            _call(self._on_result, frame)
            self._inbox.publish(frame)
        elif isinstance(frame, p.Error):
            self._on_error_frame(frame)
        elif isinstance(frame, p.Pong):
            self._pending.pong(frame)

    def _on_error_frame(self, error: p.Error) -> None:
        self.stats.errors += 1
        if self._pending.refuse(error):
            return
        logger.warning("session %s got error %s: %s", self.session_id, error.code, error.message)
        _call(self._on_error, error)
        self._inbox.publish(error)

    # --- helpers ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._run_task is None:
            raise RuntimeError("call connect() first")

    async def _wait_ready(self, timeout_s: float | None) -> None:
        assert self._run_task is not None
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait(
            {self._run_task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        if self._run_task in done:
            self._run_task.result()  # raises Unauthorized or Replaced
            raise SessionClosed("the session client is closed")
        raise TimeoutError(f"no session_ready from {self.url} within {timeout_s} s")

    async def _send_when_ready(self, frame: p.Frame, timeout_s: float | None) -> None:
        self._check_usable()
        raw = p.dump(frame)
        while True:
            await self._wait_ready(timeout_s)
            ws = self._ws
            if ws is None:
                continue
            with contextlib.suppress(ConnectionClosed):
                await ws.send(raw)
                return

    def _fail_all(self, failure: SdkError) -> None:
        """End every wait: pending submits, results, pings and event iterators."""
        if self._failure is None:
            self._failure = failure
        self._pending.fail(failure)
        self._inbox.fail(failure)


def _call(callback: Callable[[Any], None] | None, frame: p.Frame) -> None:
    if callback is None:
        return
    try:
        callback(frame)
    except Exception:
        logger.exception("session callback %r failed", callback)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("session client stopped: %s", task.exception())
