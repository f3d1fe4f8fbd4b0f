"""Raw WebSocket peers: sessions, and nodes that misbehave on purpose.

They speak PROTOCOL.md frame by frame with the ``websockets`` client and nothing of the SDK, so
that what the tests assert is what any independent client would see on the wire. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]

WAIT_S = 10.0
RESOURCES = {"cpu_pct": 5.0, "mem_pct": 10.0}
# Rejections a submit meets legitimately while every slot is taken or a snapshot is still
# catching up (a node registered on another instance is schedulable everywhere within about a
# second); a request id is not bound by a rejection, so the same id is simply tried again.
RETRYABLE = frozenset({"NO_AVAILABLE_NODE", "UNKNOWN_SERVICE", "RATE_LIMITED"})
# How long a test waits for a frame that must not come.
SETTLE_S = 0.5


async def settle() -> None:
    """Give a frame that must not come the time to come anyway."""
    await asyncio.sleep(SETTLE_S)


class RawPeer:
    """One WebSocket; a reader task keeps every frame received, in order, in ``frames``.

    ``expect`` hands out matching frames one at a time (a frame is taken once), so two waits
    for the same type return two different frames; ``of_type`` and ``count`` look at
    everything received.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self._taken: set[int] = set()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="raw-peer-reader")

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawPeer:
        return cls(await _connect(url, **kwargs))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                try:
                    frame = json.loads(message)
                except ValueError:
                    frame = {"type": None, "raw": message}
                self.frames.append(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def send(self, frame: Frame | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def expect(
        self,
        type_: str,
        *,
        timeout: float = WAIT_S,
        where: Callable[[Frame], bool] | None = None,
        **fields: Any,
    ) -> Frame:
        """The next frame not yet taken of ``type_`` whose ``fields`` match (and ``where``)."""
        return await self.expect_any(
            lambda frame: (
                frame.get("type") == type_
                and all(frame.get(key) == value for key, value in fields.items())
                and (where is None or where(frame))
            ),
            timeout=timeout,
            what=f"{type_} {fields}",
        )

    async def expect_any(
        self, where: Callable[[Frame], bool], *, timeout: float = WAIT_S, what: str = ""
    ) -> Frame:
        """The next frame not yet taken for which ``where`` holds; AssertionError after
        ``timeout`` s or when the socket closes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            for index, frame in enumerate(self.frames):
                if index not in self._taken and where(frame):
                    self._taken.add(index)
                    return frame
            remaining = deadline - loop.time()
            if self.closed or remaining <= 0:
                raise AssertionError(
                    f"no {what or 'matching frame'} within {timeout} s "
                    f"(close code {self.close_code}); received {self.frames}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def expect_error(self, code: str, *, timeout: float = WAIT_S, **ref: Any) -> Frame:
        """The next ``error`` frame with ``code`` whose ``ref`` holds ``ref``."""
        return await self.expect(
            "error",
            timeout=timeout,
            code=code,
            where=lambda f: all((f.get("ref") or {}).get(k) == v for k, v in ref.items()),
        )

    def of_type(self, type_: str, **fields: Any) -> list[Frame]:
        """Every frame received of ``type_`` whose ``fields`` match, taken or not."""
        return [
            frame
            for frame in self.frames
            if frame.get("type") == type_
            and all(frame.get(key) == value for key, value in fields.items())
        ]

    def count(self, type_: str, **fields: Any) -> int:
        return len(self.of_type(type_, **fields))

    def errors(self) -> list[Frame]:
        return self.of_type("error")

    async def wait_closed(self, timeout: float = WAIT_S) -> int | None:
        """The close code the scheduler sent, once the socket is closed."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def ping(self, ts_ms: int) -> None:
        """An application ping answered by its pong: the connection is open and served."""
        await self.send({"type": "ping", "ts_ms": ts_ms})
        await self.expect("pong", ts_ms=ts_ms)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), WAIT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._reader), WAIT_S)


class RawSession(RawPeer):
    """A session: ``start`` authenticates it; ``ready`` is its ``session_ready``."""

    ready: Frame

    @property
    def session_id(self) -> str:
        return str(self.ready["session_id"])

    @property
    def instance_id(self) -> str:
        return str(self.ready["instance_id"])

    @classmethod
    async def start(cls, ws_base: str, api_key: str, session_id: str | None = None) -> RawSession:
        """A session authenticated with ``api_key`` (resuming ``session_id`` if given)."""
        session = cls(await _connect(f"{ws_base}/ws/session/"))
        init: Frame = {"type": "session_init", "api_key": api_key}
        if session_id is not None:
            init["session_id"] = session_id
        await session.send(init)
        session.ready = await session.expect("session_ready")
        return session

    async def submit(
        self, request_id: str, service: str, payload: Frame | None = None, **extra: Any
    ) -> None:
        await self.send(
            {
                "type": "job_submit",
                "request_id": request_id,
                "service": {"id": service},
                "payload": payload if payload is not None else {},
                **extra,
            }
        )

    async def reply(self, request_id: str, *, timeout: float = WAIT_S) -> Frame:
        """The next ``job_accepted`` or ``job_rejected`` (or ``error``) about ``request_id``."""
        return await self.expect_any(
            lambda f: (
                (
                    f.get("type") in ("job_accepted", "job_rejected")
                    and f.get("request_id") == request_id
                )
                or (
                    f.get("type") == "error"
                    and (f.get("ref") or {}).get("request_id") == request_id
                )
            ),
            timeout=timeout,
            what=f"reply to {request_id}",
        )

    async def submit_accepted(
        self,
        request_id: str,
        service: str,
        payload: Frame | None = None,
        *,
        timeout: float = WAIT_S,
        **extra: Any,
    ) -> Frame:
        """Submit once; the ``job_accepted`` that must answer it."""
        await self.submit(request_id, service, payload, **extra)
        reply = await self.reply(request_id, timeout=timeout)
        assert reply["type"] == "job_accepted", reply
        return reply

    async def submit_until_accepted(
        self,
        request_id: str,
        service: str,
        payload: Frame,
        *,
        retry: Collection[str] = RETRYABLE,
        timeout: float = 20.0,
        retry_delay_s: float = 0.1,
        **extra: Any,
    ) -> Frame:
        """Submit until ``job_accepted``; a refusal whose code is in ``retry`` is tried again
        under the same request id, until ``timeout`` s. ``extra``: more fields of the submit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await self.submit(request_id, service, payload, **extra)
            reply = await self.reply(request_id, timeout=max(deadline - loop.time(), WAIT_S))
            if reply["type"] == "job_accepted":
                return reply
            if reply.get("code") not in retry or loop.time() >= deadline:
                raise AssertionError(f"submit {request_id} refused: {reply}")
            await asyncio.sleep(retry_delay_s)

    def results(self, job_id: str) -> list[Frame]:
        return self.of_type("job_result", job_id=job_id)


class RawNode(RawPeer):
    """A node that does only what the test tells it to: no acks or results on its own.

    It heartbeats in the background (listing ``holding``) so that it stays online however long
    the test takes; everything else is sent explicitly.
    """

    node_id: str = ""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__(ws)
        self.holding: set[str] = set()
        self._beats: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, ws_base: str, token: str, services: list[str], *, max_jobs: int = 1
    ) -> RawNode:
        node = cls(await _connect(f"{ws_base}/ws/node/"))
        await node.send(
            {
                "type": "node_register",
                "token": token,
                "version": "e2e-raw/1",
                "services": [{"id": service} for service in services],
                "features": [],
                "max_jobs": max_jobs,
                "resources": RESOURCES,
            }
        )
        registered = await node.expect("node_registered")
        node.node_id = registered["node_id"]
        node._beats = asyncio.create_task(node._heartbeats(registered["heartbeat_interval_ms"]))
        return node

    async def _heartbeats(self, interval_ms: int) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval_ms / 1000 * 0.8)
                await self.send(
                    {
                        "type": "node_heartbeat",
                        "resources": RESOURCES,
                        "running": sorted(self.holding),
                    }
                )

    async def report(self, type_: str, job_id: str, attempt: int, **fields: Any) -> None:
        """A reply about a job: ``job_ack``, ``job_started``, ``job_progress``, ``job_result``."""
        await self.send({"type": type_, "job_id": job_id, "attempt": attempt, **fields})

    async def close(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
        await super().close()


async def _connect(url: str, **kwargs: Any) -> ClientConnection:
    # proxy=None: the scheduler is on loopback, never reached through an environment proxy.
    return await connect(url, compression=None, proxy=None, open_timeout=WAIT_S, **kwargs)
