"""The node socket, as a worker machine sees it (PROTOCOL.md, Node ⇄ scheduler)."""

from __future__ import annotations

import pytest

from scheduler_project.testing import Peer, new_api_key, new_node, node_peer, session_peer, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


async def test_a_node_registers_and_gets_its_stable_node_id() -> None:
    node_id, token = await new_node("gpu-a")
    peer, registered = await node_peer(token)
    assert registered["type"] == "node_registered"
    assert registered["node_id"] == node_id
    assert registered["heartbeat_interval_ms"] > 0
    assert registered["instance_id"].startswith("i_")
    await peer.close()


async def test_a_job_runs_end_to_end_through_both_sockets() -> None:
    node_id, token = await new_node("gpu-e2e")
    node, _ = await node_peer(token)
    session, ready = await session_peer(await new_api_key("acme"))
    assert ready["type"] == "session_ready"
    await session.send(submit("r-1"))
    accepted = await session.receive()
    assert accepted == {
        "type": "job_accepted",
        "request_id": "r-1",
        "job_id": accepted["job_id"],
        "node_id": node_id,
    }
    assign = await node.receive()
    assert assign["type"] == "job_assign"
    assert assign["job_id"] == accepted["job_id"]
    assert assign["attempt"] == 1
    job = {"job_id": assign["job_id"], "attempt": 1}
    await node.send({"type": "job_ack", **job})
    await node.send({"type": "job_started", **job})
    await node.send({"type": "job_progress", **job, "progress": 0.5})
    progress = await session.receive()
    assert progress == {
        "type": "job_progress",
        "job_id": job["job_id"],
        "request_id": "r-1",
        "progress": 0.5,
    }
    await node.send({"type": "job_result", **job, "ok": True, "result": {"text": "hi"}})
    result = await session.receive()
    assert result == {
        "type": "job_result",
        "job_id": job["job_id"],
        "request_id": "r-1",
        "ok": True,
        "result": {"text": "hi"},
    }
    # Repeating the result is harmless: no error to the node, no second result to the session.
    await node.send({"type": "job_result", **job, "ok": True, "result": {"text": "hi"}})
    assert await node.nothing()
    assert await session.nothing()
    await node.close()
    await session.close()


async def test_a_bad_token_gets_unauthorized_and_4401() -> None:
    peer = await Peer("/ws/node/").open()
    await peer.send(
        {
            "type": "node_register",
            "token": "nt_wrong",
            "version": "1",
            "services": [],
            "features": [],
            "max_jobs": 1,
            "resources": {"cpu_pct": 1, "mem_pct": 1},
        }
    )
    error = await peer.receive()
    assert error["type"] == "error" and error["code"] == "UNAUTHORIZED"
    assert await peer.closed_with() == 4401
