"""Helpers for tests that talk to the consumers through ``WebsocketCommunicator``."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from nodes.services import node_create
from scheduler_project.asgi import application
from sessions.services import api_key_create

RESOURCES = {"cpu_pct": 10.0, "mem_pct": 20.0}


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

    async def open(self) -> Peer:
        connected, _ = await self.communicator.connect()
        assert connected
        return self

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 3.0) -> dict[str, Any]:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            raise AssertionError(f"socket closed with {output.get('code')}")
        return json.loads(output["text"])

    async def receive_type(self, frame_type: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next frame of ``frame_type``, skipping others (e.g. pongs)."""
        while True:
            frame = await self.receive(timeout)
            if frame["type"] == frame_type:
                return frame

    async def closed_with(self, timeout: float = 3.0) -> int | None:
        """Wait for the server to close the socket; the close code."""
        while True:
            output = await self.communicator.receive_output(timeout)
            if output["type"] == "websocket.close":
                return output.get("code")

    async def nothing(self, timeout: float = 0.3) -> bool:
        return await self.communicator.receive_nothing(timeout)

    async def close(self) -> None:
        await self.communicator.disconnect()


async def node_peer(
    token: str,
    *,
    services: list[dict[str, str]] | None = None,
    max_jobs: int = 2,
    features: list[str] | None = None,
) -> tuple[Peer, dict[str, Any]]:
    peer = await Peer("/ws/node/").open()
    await peer.send(
        {
            "type": "node_register",
            "token": token,
            "version": "test-1",
            "services": services if services is not None else [{"id": "asr"}],
            "features": features or [],
            "max_jobs": max_jobs,
            "resources": RESOURCES,
        }
    )
    return peer, await peer.receive()


async def session_peer(api_key: str, session_id: str | None = None) -> tuple[Peer, dict[str, Any]]:
    peer = await Peer("/ws/session/").open()
    init: dict[str, Any] = {"type": "session_init", "api_key": api_key}
    if session_id:
        init["session_id"] = session_id
    await peer.send(init)
    return peer, await peer.receive()


def submit(request_id: str, service: str = "asr", **extra: Any) -> dict[str, Any]:
    return {
        "type": "job_submit",
        "request_id": request_id,
        "service": {"id": service},
        "payload": {"audio": "..."},
        **extra,
    }
