"""A test peer: a real WebSocket server that plays the scheduler's side of PROTOCOL.md.

It authenticates, answers registration and session_init, logs every frame it receives with the
time and the connection it came on, and lets a test send frames and close connections with any
code. Scheduling itself is the test's job; this only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import protocol as p

NODE_TOKEN = "nt_good"
API_KEY = "ak_good"


def assign(job_id: str, *, attempt: int = 1, service: str = "asr", **fields: Any) -> p.JobAssign:
    """A ``job_assign`` for the fake to send; its deadline is a minute away unless given."""
    fields.setdefault("features", [])
    fields.setdefault("payload", {})
    fields.setdefault("deadline_ms", int(time.time() * 1000) + 60_000)
    return p.JobAssign(job_id=job_id, attempt=attempt, service=p.ServiceRef(id=service), **fields)


@dataclass
class Received:
    frame: p.Frame
    connection: int
    at: float

    @property
    def type(self) -> str:
        return p.message_type(type(self.frame))


@dataclass
class FakeScheduler:
    heartbeat_interval_ms: int = 100
    node_connections: list[ServerConnection] = field(default_factory=list)
    session_connections: list[ServerConnection] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    session_ids: list[str | None] = field(default_factory=list)
    """The ``session_id`` each session_init asked for."""
    awaiting: list[list[str] | None] = field(default_factory=list)
    """The ``awaiting`` each session_init named."""
    accept_submits: bool = True
    jobs_by_request: dict[str, str] = field(default_factory=dict)
    url: str = ""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def node_url(self) -> str:
        return f"{self.url}/ws/node/"

    @property
    def session_url(self) -> str:
        return f"{self.url}/ws/session/"

    # --- what the test reads ----------------------------------------------------------------

    def about(self, job_id: str) -> list[p.Frame]:
        """Every frame a node sent about ``job_id``, in order."""
        return [r.frame for r in self.received if getattr(r.frame, "job_id", None) == job_id]

    def of_type(self, type_: str, *, connection: int | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if r.type == type_ and (connection is None or r.connection == connection)
        ]

    async def wait_for(
        self, predicate: Callable[[], object], *, timeout_s: float = 3.0, what: str = ""
    ) -> None:
        """Until ``predicate()`` holds; it may look at the fake or at the client under test."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                seen = [r.type for r in self.received]
                raise AssertionError(f"timed out waiting for {what or predicate}; got {seen}")
            await asyncio.sleep(0.005)

    async def frames(self, type_: str, count: int = 1, *, timeout_s: float = 3.0) -> list[Received]:
        """The first ``count`` frames of ``type_``, once that many arrived."""
        await self.wait_for(
            lambda: len(self.of_type(type_)) >= count, timeout_s=timeout_s, what=f"{count} {type_}"
        )
        return self.of_type(type_)[:count]

    # --- what the test does -----------------------------------------------------------------

    async def send_node(self, frame: p.Frame) -> None:
        await self.node_connections[-1].send(p.dump(frame))

    async def send_session(self, frame: p.Frame) -> None:
        await self.session_connections[-1].send(p.dump(frame))

    async def close_node(self, code: int, reason: str = "") -> None:
        await self.node_connections[-1].close(code, reason)

    async def close_session(self, code: int, reason: str = "") -> None:
        await self.session_connections[-1].close(code, reason)

    # --- the server -------------------------------------------------------------------------

    def _record(self, frame: p.Frame, connection: int) -> None:
        self.received.append(Received(frame, connection, time.monotonic()))

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        peer: p.Peer = "node" if ws.request.path == "/ws/node/" else "session"
        connections = self.node_connections if peer == "node" else self.session_connections
        connections.append(ws)
        number = len(connections)
        try:
            first = p.parse_inbound(await ws.recv(), peer=peer)
        except (p.ProtocolError, ConnectionClosed):
            await ws.close(p.CloseCode.UNAUTHORIZED)
            return
        self._record(first, number)
        if not await self._authenticate(ws, first):
            return
        try:
            async for raw in ws:
                try:
                    frame = p.parse_inbound(raw, peer=peer)
                except p.ProtocolError as exc:
                    await ws.send(p.dump(exc.to_frame()))
                    continue
                self._record(frame, number)
                await self._reply(ws, frame)
        except ConnectionClosed:
            pass

    async def _authenticate(self, ws: ServerConnection, first: p.Frame) -> bool:
        if isinstance(first, p.NodeRegister) and first.token == NODE_TOKEN:
            registered = p.NodeRegistered(
                node_id="n-1",
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                instance_id=f"fake-{len(self.node_connections)}",
            )
            await ws.send(p.dump(registered))
            return True
        if isinstance(first, p.SessionInit) and first.api_key == API_KEY:
            self.session_ids.append(first.session_id)
            self.awaiting.append(first.awaiting)
            session_id = first.session_id or f"s-{next(self._ids)}"
            ready = p.SessionReady(session_id=session_id, instance_id="fake")
            await ws.send(p.dump(ready))
            return True
        error = p.Error(code=p.ErrorCode.UNAUTHORIZED, message="bad credentials")
        await ws.send(p.dump(error))
        await ws.close(p.CloseCode.UNAUTHORIZED, "bad credentials")
        return False

    async def _reply(self, ws: ServerConnection, frame: p.Frame) -> None:
        if isinstance(frame, p.Ping):
            await ws.send(p.dump(p.Pong(ts_ms=frame.ts_ms or 0)))
        elif isinstance(frame, p.JobSubmit) and self.accept_submits:
            job_id = self.jobs_by_request.setdefault(frame.request_id, f"j-{frame.request_id}")
            accepted = p.JobAccepted(request_id=frame.request_id, job_id=job_id, node_id="n-1")
            await ws.send(p.dump(accepted))
        elif isinstance(frame, p.SessionJobCancel):
            request_id = next(
                (r for r, j in self.jobs_by_request.items() if j == frame.job_id), None
            )
            if request_id is None:
                error = p.Error(
                    code=p.ErrorCode.JOB_NOT_FOUND,
                    message="no such job",
                    ref=p.ErrorRef(type="job_cancel", job_id=frame.job_id),
                )
                await ws.send(p.dump(error))
                return
            cancelled = p.SessionJobResult(
                job_id=frame.job_id,
                request_id=request_id,
                ok=False,
                error=p.JobError(code="CANCELLED", message="cancelled by the session"),
            )
            await ws.send(p.dump(cancelled))


@asynccontextmanager
async def running(scheduler: FakeScheduler) -> AsyncIterator[FakeScheduler]:
    async with serve(scheduler.handle, "127.0.0.1", 0, compression=None) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        scheduler.url = f"ws://{host}:{port}"
        yield scheduler
