"""A session's requests that wait for the scheduler's answer.

A submit waits for its ``job_accepted`` or ``job_rejected`` (or an ``error`` about its
``request_id``). One sent on a connection that dropped may have lost its reply with it, so it is
sent again on the next connection; the ``request_id`` makes that safe (the scheduler answers a
repeat with the same job). A ping waits for its ``pong``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.errors import RequestFailed, SdkError
from scheduler_sdk.session.stats import SessionStats

Reply = p.JobAccepted | p.JobRejected


@dataclass(eq=False)
class PendingSubmit:
    raw: str
    reply: asyncio.Future[Reply]
    sent_on: ClientConnection | None = None


class PendingRequests:
    """Submits by ``request_id`` and pings by ``ts_ms``, until answered or failed."""

    def __init__(self, stats: SessionStats) -> None:
        self._stats = stats
        self._submits: dict[str, PendingSubmit] = {}
        self._pings: dict[int, asyncio.Future[None]] = {}

    # --- submits ----------------------------------------------------------------------------

    def waiting(self, request_id: str) -> bool:
        return request_id in self._submits

    def add(self, request_id: str, raw: str) -> PendingSubmit:
        pending = PendingSubmit(raw, asyncio.get_running_loop().create_future())
        self._submits[request_id] = pending
        return pending

    def discard(self, request_id: str, pending: PendingSubmit) -> None:
        if self._submits.get(request_id) is pending:
            del self._submits[request_id]

    async def send(self, pending: PendingSubmit, ws: ClientConnection | None) -> None:
        """Send on ``ws`` if connected; else ``resend()`` sends it on the next connection."""
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(pending.raw)
            pending.sent_on = ws

    async def resend(self, ws: ClientConnection) -> None:
        """Send on the new ``ws`` every submit not sent on it yet."""
        # Loop: submits may arrive while sending.
        while unsent := [s for s in self._submits.values() if s.sent_on is not ws]:
            for pending in unsent:
                if pending.sent_on is not None:
                    self._stats.submits_resent += 1
                await ws.send(pending.raw)
                pending.sent_on = ws

    def answer(self, reply: Reply) -> None:
        pending = self._submits.get(reply.request_id)
        if pending is not None and not pending.reply.done():
            pending.reply.set_result(reply)

    def refuse(self, error: p.Error) -> bool:
        """Fail the submit ``error`` is about with ``RequestFailed``; False if none waits."""
        request_id = error.ref.request_id if error.ref else None
        pending = self._submits.get(request_id) if request_id else None
        if pending is None or pending.reply.done():
            return False
        pending.reply.set_exception(RequestFailed(error))
        return True

    # --- pings ------------------------------------------------------------------------------

    def ping(self) -> tuple[int, asyncio.Future[None]]:
        """A fresh ``ts_ms`` for a ping, and the future its ``pong`` completes."""
        ts_ms = int(time.time() * 1000)
        while ts_ms in self._pings:
            ts_ms += 1
        pong = asyncio.get_running_loop().create_future()
        self._pings[ts_ms] = pong
        return ts_ms, pong

    def end_ping(self, ts_ms: int) -> None:
        self._pings.pop(ts_ms, None)

    def pong(self, pong: p.Pong) -> None:
        future = self._pings.get(pong.ts_ms)
        if future is not None and not future.done():
            future.set_result(None)

    # --- the end ----------------------------------------------------------------------------

    def fail(self, failure: SdkError) -> None:
        """End every wait with ``failure``."""
        futures: list[asyncio.Future[Any]] = [s.reply for s in self._submits.values()]
        futures += self._pings.values()
        for future in futures:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # a future nobody awaits must not warn at exit
