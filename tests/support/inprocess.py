"""Helpers for tests that talk to the consumers through ``WebsocketCommunicator``.

Every ``Peer`` opened here is remembered until ``close_peers()`` (call it from a fixture that
depends on ``scheduler``, so sockets close before the scheduler's duties stop and its keys go).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from hotstate import jobs as hjobs
from hotstate.jobs import JobState
from nodes.services import node_create
from scheduler_project.asgi import application
from sessions.services import api_key_create

RESOURCES = {"cpu_pct": 10.0, "mem_pct": 20.0}

_open: list[Peer] = []
_pings = itertools.count(1)


async def new_node(name: str) -> tuple[str, str]:
    """A node record; returns (node_id, token)."""
    node, token = await database_sync_to_async(node_create)(name=name)
    return node.node_id, token


async def new_api_key(tenant: str) -> str:
    _, key = await database_sync_to_async(api_key_create)(tenant=tenant)
    return key


class Peer:
    """A WebSocket peer of the scheduler in a test: send and receive JSON frames."""

    def __init__(self, path: str) -> None:
        self.communicator = WebsocketCommunicator(application, path)
        self.closed = False

    async def open(self) -> Peer:
        connected, _ = await self.communicator.connect()
        assert connected
        _open.append(self)
        return self

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def output(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next ASGI message the server sent (a frame or the close), undecoded."""
        message: dict[str, Any] = await self.communicator.receive_output(timeout)
        return message

    async def receive(self, timeout: float = 3.0) -> dict[str, Any]:
        output = await self.output(timeout)
        if output["type"] == "websocket.close":
            raise AssertionError(f"socket closed with {output.get('code')}")
        frame: dict[str, Any] = json.loads(output["text"])
        return frame

    async def receive_type(self, frame_type: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next frame of ``frame_type``, skipping others (e.g. pongs)."""
        while True:
            frame = await self.receive(timeout)
            if frame["type"] == frame_type:
                return frame

    async def settle(self, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Ping and wait for the pong: every frame sent before it has been handled.

        Returns the frames that arrived before the pong (the consumer handles frames in order,
        so these are the replies to what was sent before).
        """
        ts_ms = next(_pings)
        await self.send({"type": "ping", "ts_ms": ts_ms})
        before = []
        while True:
            frame = await self.receive(timeout)
            if frame == {"type": "pong", "ts_ms": ts_ms}:
                return before
            before.append(frame)

    async def closed_with(self, timeout: float = 3.0) -> int | None:
        """Wait for the server to close the socket; the close code."""
        while True:
            output = await self.output(timeout)
            if output["type"] == "websocket.close":
                code: int | None = output.get("code")
                return code

    async def nothing(self, timeout: float = 0.3) -> bool:
        quiet: bool = await self.communicator.receive_nothing(timeout)
        return quiet

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.communicator.disconnect()


async def close_peers() -> None:
    """Disconnect every peer a test opened (the consumers' clean-up runs)."""
    while _open:
        peer = _open.pop()
        # A receive that timed out cancelled the consumer already.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await peer.close()


def register_frame(
    token: str,
    *,
    services: list[dict[str, str]] | None = None,
    max_jobs: int = 2,
    features: list[str] | None = None,
    resources: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "type": "node_register",
        "token": token,
        "version": "test-1",
        "services": services if services is not None else [{"id": "asr"}],
        "features": features or [],
        "max_jobs": max_jobs,
        "resources": resources or RESOURCES,
    }


async def node_peer(
    token: str,
    *,
    services: list[dict[str, str]] | None = None,
    max_jobs: int = 2,
    features: list[str] | None = None,
    resources: dict[str, float] | None = None,
) -> tuple[Peer, dict[str, Any]]:
    peer = await Peer("/ws/node/").open()
    await peer.send(
        register_frame(
            token, services=services, max_jobs=max_jobs, features=features, resources=resources
        )
    )
    return peer, await peer.receive()


async def online_node(name: str, **caps: Any) -> tuple[str, Peer]:
    """A registered, connected node: (node_id, peer)."""
    node_id, token = await new_node(name)
    peer, registered = await node_peer(token, **caps)
    assert registered["type"] == "node_registered", registered
    return node_id, peer


async def session_peer(
    api_key: str, session_id: str | None = None, awaiting: list[str] | None = None
) -> tuple[Peer, dict[str, Any]]:
    peer = await Peer("/ws/session/").open()
    init: dict[str, Any] = {"type": "session_init", "api_key": api_key}
    if session_id:
        init["session_id"] = session_id
    if awaiting is not None:
        init["awaiting"] = awaiting
    await peer.send(init)
    return peer, await peer.receive()


async def online_session(api_key: str) -> tuple[str, Peer]:
    """A connected session: (session_id, peer)."""
    peer, ready = await session_peer(api_key)
    assert ready["type"] == "session_ready", ready
    return ready["session_id"], peer


def submit(request_id: str, service: str = "asr", **extra: Any) -> dict[str, Any]:
    return {
        "type": "job_submit",
        "request_id": request_id,
        "service": {"id": service},
        "payload": {"audio": "..."},
        **extra,
    }


async def submitted(session: Peer, request_id: str, **extra: Any) -> dict[str, Any]:
    """Submit from ``session``; the first frame it gets back (its answer)."""
    await session.send(submit(request_id, **extra))
    return await session.receive()


def heartbeat(running: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "node_heartbeat", "resources": RESOURCES, "running": running or [], **extra}


def reply(assign: dict[str, Any], frame_type: str, **extra: Any) -> dict[str, Any]:
    """A node's reply about the job of ``assign`` (same job id and attempt)."""
    return {"type": frame_type, "job_id": assign["job_id"], "attempt": assign["attempt"], **extra}


async def accepted_job(session: Peer, node: Peer, request_id: str, **extra: Any) -> dict[str, Any]:
    """Submit from ``session``; return the ``job_assign`` that ``node`` got for it."""
    await session.send(submit(request_id, **extra))
    accepted = await session.receive()
    assert accepted["type"] == "job_accepted", accepted
    assign = await node.receive_type("job_assign")
    assert assign["job_id"] == accepted["job_id"]
    return assign


@contextlib.asynccontextmanager
async def beating(*peers: Peer, interval: float) -> AsyncIterator[None]:
    """Keep nodes online: send each a heartbeat every ``interval`` seconds meanwhile."""

    async def beat() -> None:
        while True:
            for peer in peers:
                if not peer.closed:
                    await peer.send(heartbeat())
            await asyncio.sleep(interval)

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 3.0, every: float = 0.02
) -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(every)


async def job_state(job_id: str) -> tuple[JobState, int, str | None]:
    """A job's (state, attempt, node_id) as stored in Redis."""
    job = await hjobs.job_get(job_id=job_id)
    assert job is not None, f"job {job_id} does not exist"
    return job.state, job.attempt, job.node_id
