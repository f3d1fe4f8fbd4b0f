"""``Peers``: whatever a test connects to a scheduler, closed after it even when it fails."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from scheduler_sdk import Job, NodeAgent, SessionClient
from tests.e2e.harness.raw import RawNode, RawPeer, RawSession
from tests.e2e.harness.sdk import node_agent, session_client


class Endpoint(Protocol):
    """Where peers connect: an instance, a one-instance system or a load balancer."""

    @property
    def ws(self) -> str: ...


P = TypeVar("P", bound=RawPeer)


class Peers:
    """Everything a test connects, closed after it even when it fails."""

    def __init__(self) -> None:
        self.raw: list[RawPeer] = []
        self.agents: list[NodeAgent] = []
        self.clients: list[SessionClient] = []

    def track(self, peer: P) -> P:
        self.raw.append(peer)
        return peer

    async def session(
        self, at: Endpoint, api_key: str, session_id: str | None = None
    ) -> RawSession:
        return self.track(await RawSession.start(at.ws, api_key, session_id))

    async def node(
        self, at: Endpoint, token: str, services: list[str], *, max_jobs: int = 1
    ) -> RawNode:
        return self.track(await RawNode.start(at.ws, token, services, max_jobs=max_jobs))

    async def agent(
        self,
        at: Endpoint,
        token: str,
        service: str,
        handler: Callable[[Job], Any],
        *,
        max_jobs: int,
        **options: Any,
    ) -> NodeAgent:
        """A started SDK node; on an instance, registered with that very instance."""
        agent = node_agent(at.ws, token, service, handler, max_jobs=max_jobs, **options)
        self.agents.append(agent)
        await agent.start(timeout_s=10)
        expected = getattr(at, "instance_id", "")
        assert not expected or agent.instance_id == expected, (agent.instance_id, expected)
        return agent

    async def client(self, at: Endpoint, api_key: str, **options: Any) -> SessionClient:
        """A connected SDK session."""
        client = session_client(at.ws, api_key, **options)
        self.clients.append(client)
        await client.connect(timeout_s=10)
        return client

    async def close(self) -> None:
        for peer in self.raw:
            await peer.close()
        for client in self.clients:
            await client.close()
        for agent in self.agents:
            await agent.stop(grace_s=0)
