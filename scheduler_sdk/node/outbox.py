"""The node's outgoing frames: sent at once while registered, kept for the next connection else.

1. ``send()`` sends on the registered connection. A frame that must arrive (``reliable``:
   everything but progress and heartbeats) is queued when there is none or the send fails.
2. A ``job_result`` that was sent is remembered for ``RESULT_RESEND_WINDOW_S``: it may have died
   in the socket buffer of a connection that dropped, and PROTOCOL.md makes a repeated
   ``job_result`` harmless, so ``close()`` puts those results back in front of the queue.
3. ``open(ws)`` after ``node_registered`` sends the queue in order, a burst and then at a steady
   rate, before anything else may use the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import NamedTuple

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

import protocol as p
from scheduler_sdk.node.stats import NodeStats

RESULT_RESEND_WINDOW_S = 10.0
# The backlog sent after a reconnect (queued replies, resent results) stays under the scheduler's
# default frame limit (PROTOCOL.md: 50 frames/s, burst 100): a burst, then a steady rate. Sent all
# at once, its tail would be refused with RATE_LIMITED and those results lost.
BACKLOG_BURST = 50
BACKLOG_FRAMES_PER_S = 40.0


class _Outgoing(NamedTuple):
    job_id: str | None
    raw: str
    is_result: bool


class Outbox:
    """Every frame the agent sends, except ``node_register`` and the ``node_drain`` after it."""

    def __init__(self, stats: NodeStats) -> None:
        self._stats = stats
        self._queue: deque[_Outgoing] = deque()
        self._recent_results: deque[tuple[float, str, str]] = deque()
        self._ws: ClientConnection | None = None  # set while registered

    @property
    def attached(self) -> bool:
        """A registered connection takes the frames now."""
        return self._ws is not None

    async def send(
        self, frame: p.Frame, job_id: str | None = None, *, reliable: bool = True
    ) -> bool:
        return await self.send_raw(p.dump(frame), job_id=job_id, reliable=reliable)

    async def send_raw(
        self, raw: str, *, job_id: str | None, reliable: bool, is_result: bool = False
    ) -> bool:
        """Send now if registered; else queue ``reliable`` frames for the next connection."""
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(raw)
            except ConnectionClosed:
                pass
            else:
                if is_result and job_id is not None:
                    self._remember_result(job_id, raw)
                return True
        if reliable:
            self._queue.append(_Outgoing(job_id, raw, is_result))
        return False

    async def open(self, ws: ClientConnection) -> None:
        """Send the backlog on ``ws``, then let every ``send()`` use it."""
        # Nothing else may send on ws until the backlog is out, so that order is kept; frames
        # queued meanwhile land in the queue and go out in this same loop.
        sent = 0
        while self._queue:
            if sent >= BACKLOG_BURST:
                await asyncio.sleep(1.0 / BACKLOG_FRAMES_PER_S)
            sent += 1
            job_id, raw, is_result = self._queue[0]
            await ws.send(raw)
            self._queue.popleft()
            if is_result and job_id is not None:
                self._remember_result(job_id, raw)
        self._ws = ws

    def close(self) -> None:
        """The connection ended: queue from now on, and resend the results it may have lost."""
        self._ws = None
        cutoff = time.monotonic() - RESULT_RESEND_WINDOW_S
        resend = [
            _Outgoing(job_id, raw, True) for at, job_id, raw in self._recent_results if at >= cutoff
        ]
        self._recent_results.clear()
        self._stats.results_resent += len(resend)
        self._queue.extendleft(reversed(resend))

    def forget(self, job_id: str) -> None:
        """Drop everything still unsent about ``job_id``."""
        self._queue = deque(item for item in self._queue if item.job_id != job_id)
        self._recent_results = deque(item for item in self._recent_results if item[1] != job_id)

    def clear(self) -> None:
        self._queue.clear()
        self._recent_results.clear()

    def _remember_result(self, job_id: str, raw: str) -> None:
        now = time.monotonic()
        self._recent_results.append((now, job_id, raw))
        while self._recent_results and now - self._recent_results[0][0] > RESULT_RESEND_WINDOW_S:
            self._recent_results.popleft()
