"""Framing, as both kinds of peer see it (PROTOCOL.md, Framing)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async

from nodes.models import Node
from sessions.models import ApiKey
from tests.support.inprocess import (
    Peer,
    accepted_job,
    new_api_key,
    new_node,
    online_node,
    register_frame,
    reply,
    submit,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]

PATHS = {"node": "/ws/node/", "session": "/ws/session/"}


async def auth_frame(kind: str) -> dict[str, object]:
    """A valid authenticating first frame for a peer of ``kind``."""
    if kind == "node":
        _, token = await new_node(f"frame-{time.monotonic_ns()}")
        return register_frame(token)
    return {"type": "session_init", "api_key": await new_api_key("acme")}


async def authenticated(kind: str) -> Peer:
    peer = await Peer(PATHS[kind]).open()
    await peer.send(await auth_frame(kind))
    first = await peer.receive()
    assert first["type"] == {"node": "node_registered", "session": "session_ready"}[kind]
    return peer


both = pytest.mark.parametrize("kind", ["node", "session"])


# --- before authentication ----------------------------------------------------------------------


@both
async def test_a_silent_peer_is_closed_4401_after_the_auth_timeout_without_an_error(
    kind: str, settings
) -> None:
    settings.AUTH_TIMEOUT = 0.3
    peer = await Peer(PATHS[kind]).open()
    started = time.monotonic()
    output = await peer.output(timeout=2.0)
    assert output == {"type": "websocket.close", "code": 4401}
    assert time.monotonic() - started >= 0.25


@both
@pytest.mark.parametrize(
    "first",
    [
        "not json at all",
        "[1, 2]",
        json.dumps({"type": "ping", "ts_ms": 1}),
        json.dumps({"type": "bogus"}),
        json.dumps({"no_type": True}),
    ],
    ids=["not-json", "not-an-object", "ping-first", "unknown-type", "no-type"],
)
async def test_an_unusable_first_frame_gets_unauthorized_then_4401(kind: str, first: str) -> None:
    peer = await Peer(PATHS[kind]).open()
    await peer.send(first)
    error = await peer.receive()
    assert error["type"] == "error"
    assert error["code"] == "UNAUTHORIZED"
    assert await peer.closed_with() == 4401


@both
async def test_the_other_peers_auth_message_or_a_later_message_first_gets_4401(kind: str) -> None:
    wrong = {
        "node": [
            {"type": "session_init", "api_key": "sk_x"},
            {"type": "job_ack", "job_id": "j_1", "attempt": 1},
        ],
        "session": [
            register_frame("nt_x"),
            {"type": "job_cancel", "job_id": "j_1"},
        ],
    }[kind]
    for frame in wrong:
        peer = await Peer(PATHS[kind]).open()
        await peer.send(frame)
        error = await peer.receive()
        assert (error["type"], error["code"]) == ("error", "UNAUTHORIZED")
        assert await peer.closed_with() == 4401


async def test_a_node_register_failing_validation_gets_4401() -> None:
    _, token = await new_node("invalid-register")
    peer = await Peer("/ws/node/").open()
    await peer.send({**register_frame(token), "max_jobs": 0})
    error = await peer.receive()
    assert (error["type"], error["code"]) == ("error", "UNAUTHORIZED")
    assert await peer.closed_with() == 4401


@pytest.mark.parametrize("token", ["nt_unknown", "disabled"])
async def test_a_node_with_a_bad_or_disabled_token_gets_unauthorized_then_4401(token: str) -> None:
    node_id, real_token = await new_node("bad-token")
    if token == "disabled":
        await database_sync_to_async(Node.objects.filter(node_id=node_id).update)(enabled=False)
        token = real_token
    peer = await Peer("/ws/node/").open()
    await peer.send(register_frame(token))
    error = await peer.receive()
    assert (error["type"], error["code"]) == ("error", "UNAUTHORIZED")
    assert "ref" not in error
    assert await peer.closed_with() == 4401


@pytest.mark.parametrize("key", ["sk_unknown", "inactive"])
async def test_a_session_with_a_bad_or_inactive_key_gets_unauthorized_then_4401(key: str) -> None:
    real_key = await new_api_key("acme")
    if key == "inactive":
        await database_sync_to_async(ApiKey.objects.update)(active=False)
        key = real_key
    peer = await Peer("/ws/session/").open()
    await peer.send({"type": "session_init", "api_key": key})
    error = await peer.receive()
    assert (error["type"], error["code"]) == ("error", "UNAUTHORIZED")
    assert await peer.closed_with() == 4401


# --- after authentication: bad frames change nothing ---------------------------------------------


@both
async def test_a_frame_that_is_not_json_gets_bad_message_and_the_socket_stays_open(
    kind: str,
) -> None:
    peer = await authenticated(kind)
    await peer.send("{not json")
    error = await peer.receive()
    assert (error["type"], error["code"]) == ("error", "BAD_MESSAGE")
    await peer.send({"type": "ping", "ts_ms": 7})
    assert await peer.receive() == {"type": "pong", "ts_ms": 7}


@both
@pytest.mark.parametrize("frame_type", ["bogus", "job_assign", "node_registered", "pong"])
async def test_an_unknown_type_gets_unknown_type_with_the_type_in_ref(
    kind: str, frame_type: str
) -> None:
    peer = await authenticated(kind)
    await peer.send({"type": frame_type, "job_id": "j_1"})
    error = await peer.receive()
    assert error["type"] == "error"
    assert error["code"] == "UNKNOWN_TYPE"
    assert error["ref"] == {"type": frame_type, "job_id": "j_1"}
    assert await peer.settle() == []


async def test_a_session_sending_a_node_message_gets_unknown_type() -> None:
    peer = await authenticated("session")
    await peer.send({"type": "job_ack", "job_id": "j_1", "attempt": 1})
    error = await peer.receive()
    assert (error["code"], error["ref"]) == ("UNKNOWN_TYPE", {"type": "job_ack", "job_id": "j_1"})


async def test_a_node_sending_a_session_message_gets_unknown_type() -> None:
    peer = await authenticated("node")
    await peer.send(submit("r-1"))
    error = await peer.receive()
    assert (error["code"], error["ref"]) == (
        "UNKNOWN_TYPE",
        {"type": "job_submit", "request_id": "r-1"},
    )


async def test_a_session_frame_failing_validation_gets_bad_message_with_a_readable_ref() -> None:
    peer = await authenticated("session")
    await peer.send({"type": "job_submit", "request_id": "r-7", "service": {"id": "asr"}})
    error = await peer.receive()
    assert error["code"] == "BAD_MESSAGE"
    assert "payload" in error["message"]
    assert error["ref"] == {"type": "job_submit", "request_id": "r-7"}
    # An id of the wrong kind cannot be read into ref, but the frame still gets its error.
    await peer.send({"type": "job_cancel", "job_id": 5})
    error = await peer.receive()
    assert (error["code"], error["ref"]) == ("BAD_MESSAGE", {"type": "job_cancel"})
    assert await peer.settle() == []


async def test_a_node_frame_failing_validation_gets_bad_message_with_a_readable_ref() -> None:
    peer = await authenticated("node")
    await peer.send({"type": "job_progress", "job_id": "j_9", "attempt": 1, "progress": 1.5})
    error = await peer.receive()
    assert error["code"] == "BAD_MESSAGE"
    assert "progress" in error["message"]
    assert error["ref"] == {"type": "job_progress", "job_id": "j_9"}
    await peer.send({"type": "job_ack", "job_id": "j_9", "attempt": "1"})
    error = await peer.receive()
    assert (error["code"], error["ref"]) == ("BAD_MESSAGE", {"type": "job_ack", "job_id": "j_9"})


@both
async def test_a_second_authenticating_frame_gets_an_error_and_changes_nothing(kind: str) -> None:
    peer = await authenticated(kind)
    await peer.send(await auth_frame(kind))
    error = await peer.receive()
    assert error["type"] == "error"
    assert error["code"] == "BAD_MESSAGE"
    assert error["ref"]["type"] == {"node": "node_register", "session": "session_init"}[kind]
    assert await peer.settle() == []


# --- limits ---------------------------------------------------------------------------------------


@both
async def test_a_frame_over_max_frame_bytes_closes_1009(kind: str, settings) -> None:
    settings.MAX_FRAME_BYTES = 2048
    peer = await authenticated(kind)
    await peer.send({"type": "ping", "pad": "x" * 1000})
    assert (await peer.receive())["type"] == "pong"
    await peer.send({"type": "ping", "pad": "x" * 2100})
    assert await peer.closed_with() == 1009


async def test_the_frame_limit_counts_bytes_on_the_wire_not_characters(settings) -> None:
    settings.MAX_FRAME_BYTES = 2048
    peer = await authenticated("session")
    # 600 characters, 1200 bytes.
    await peer.send(json.dumps({"type": "ping", "pad": "é" * 600}, ensure_ascii=False))
    assert (await peer.receive())["type"] == "pong"
    await peer.send(json.dumps({"type": "ping", "pad": "é" * 1100}, ensure_ascii=False))
    assert await peer.closed_with() == 1009


async def test_an_unauthenticated_frame_over_the_limit_closes_1009(settings) -> None:
    settings.MAX_FRAME_BYTES = 2048
    peer = await Peer("/ws/session/").open()
    await peer.send({"type": "session_init", "api_key": "x" * 3000})
    assert await peer.output() == {"type": "websocket.close", "code": 1009}


async def test_a_payload_over_max_payload_bytes_gets_job_rejected(settings) -> None:
    settings.MAX_PAYLOAD_BYTES = 1000
    await online_node("payload-node")
    peer = await authenticated("session")
    await peer.send({**submit("r-big"), "payload": {"audio": "x" * 1000}})
    rejected = await peer.receive()
    assert set(rejected) == {"type", "request_id", "code", "message"}
    assert (rejected["type"], rejected["request_id"], rejected["code"]) == (
        "job_rejected",
        "r-big",
        "PAYLOAD_TOO_LARGE",
    )
    await peer.send({**submit("r-small"), "payload": {"audio": "x" * 900}})
    assert (await peer.receive())["type"] == "job_accepted"


@both
async def test_a_peer_over_its_rate_limit_gets_rate_limited_and_stays_open(
    kind: str, settings
) -> None:
    settings.RATE_LIMIT_BURST = 5
    settings.RATE_LIMIT_PER_S = 0.1
    peer = await authenticated(kind)  # the first frame spends a token too
    for ts in range(4):
        await peer.send({"type": "ping", "ts_ms": ts})
        assert await peer.receive() == {"type": "pong", "ts_ms": ts}
    await peer.send({"type": "ping", "ts_ms": 99})
    error = await peer.receive()
    assert error["type"] == "error"
    assert error["code"] == "RATE_LIMITED"
    assert error["ref"] == {"type": "ping"}
    await peer.send("{not json")
    error = await peer.receive()
    assert error["code"] == "RATE_LIMITED"
    assert await peer.nothing()


async def test_a_submit_over_the_rate_limit_gets_job_rejected_rate_limited(settings) -> None:
    settings.RATE_LIMIT_BURST = 2
    settings.RATE_LIMIT_PER_S = 0.1
    await online_node("rate-node")
    peer = await authenticated("session")
    await peer.send(submit("r-1"))
    assert (await peer.receive())["type"] == "job_accepted"
    await peer.send(submit("r-2"))
    rejected = await peer.receive()
    assert set(rejected) == {"type", "request_id", "code", "message"}
    assert (rejected["type"], rejected["request_id"], rejected["code"]) == (
        "job_rejected",
        "r-2",
        "RATE_LIMITED",
    )


@both
async def test_a_peer_that_stays_over_its_limit_is_closed_4429(kind: str, settings) -> None:
    settings.RATE_LIMIT_BURST = 2
    settings.RATE_LIMIT_PER_S = 0.1
    settings.RATE_LIMIT_PERSIST_S = 0.4
    peer = await authenticated(kind)
    await peer.send({"type": "ping"})
    assert (await peer.receive())["type"] == "pong"
    started = time.monotonic()
    refusals = 0
    while True:
        await peer.send({"type": "ping"})
        output = await peer.output()
        if output["type"] == "websocket.close":
            break
        assert json.loads(output["text"])["code"] == "RATE_LIMITED"
        refusals += 1
        assert time.monotonic() - started < 3, "never closed"
        await asyncio.sleep(0.05)
    assert output["code"] == 4429
    assert refusals >= 3
    assert time.monotonic() - started >= 0.4


# --- ping -----------------------------------------------------------------------------------------


@both
async def test_ping_gets_a_pong_echoing_ts_ms(kind: str) -> None:
    peer = await authenticated(kind)
    await peer.send({"type": "ping", "ts_ms": 1_700_000_000_123})
    assert await peer.receive() == {"type": "pong", "ts_ms": 1_700_000_000_123}


@both
async def test_ping_without_ts_ms_gets_a_pong_with_the_schedulers_time(kind: str) -> None:
    peer = await authenticated(kind)
    before = int(time.time() * 1000)
    await peer.send({"type": "ping"})
    pong = await peer.receive()
    assert pong["type"] == "pong"
    assert before <= pong["ts_ms"] <= int(time.time() * 1000)


# --- replaced connections -------------------------------------------------------------------------


async def test_a_newer_connection_with_the_same_node_token_closes_the_older_4409() -> None:
    node_id, token = await new_node("twice")
    older = await Peer("/ws/node/").open()
    await older.send(register_frame(token))
    assert (await older.receive())["node_id"] == node_id
    newer = await Peer("/ws/node/").open()
    await newer.send(register_frame(token))
    assert (await newer.receive())["node_id"] == node_id
    assert await older.closed_with() == 4409
    await older.close()
    # The older socket's clean-up does not take the node offline: the newer one still serves.
    await newer.send({"type": "ping", "ts_ms": 1})
    assert await newer.receive() == {"type": "pong", "ts_ms": 1}
    session = await authenticated("session")
    await session.send(submit("r-1"))
    assert (await session.receive())["node_id"] == node_id
    assert (await newer.receive())["type"] == "job_assign"


async def test_resuming_a_connected_session_closes_the_older_socket_4409() -> None:
    key = await new_api_key("acme")
    older = await Peer("/ws/session/").open()
    await older.send({"type": "session_init", "api_key": key})
    session_id = (await older.receive())["session_id"]
    newer = await Peer("/ws/session/").open()
    await newer.send({"type": "session_init", "api_key": key, "session_id": session_id})
    ready = await newer.receive()
    assert (ready["type"], ready["session_id"]) == ("session_ready", session_id)
    assert await older.closed_with() == 4409
    await older.close()
    # The older socket's clean-up leaves the session with the newer socket: results reach it.
    _, node = await online_node("resume-node")
    assign = await accepted_job(newer, node, "r-1")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True, result={"n": 1}))
    result = await newer.receive()
    assert (result["type"], result["job_id"], result["ok"]) == (
        "job_result",
        assign["job_id"],
        True,
    )


async def test_a_first_frame_in_time_is_not_cut_off_by_a_slow_authentication(
    settings, monkeypatch
) -> None:
    """The auth timeout is for the peer's first frame, not for the scheduler's own work."""
    from nodes import services

    settings.AUTH_TIMEOUT = 0.2
    real = services.node_authenticate

    def slow_authenticate(*, token: str) -> Node:
        time.sleep(0.4)  # a slow database (in its thread, as every ORM call here)
        return real(token=token)

    monkeypatch.setattr(services, "node_authenticate", slow_authenticate)
    node_id, token = await new_node("slow-db")
    peer = await Peer("/ws/node/").open()
    await peer.send(register_frame(token))
    registered = await peer.receive()
    assert (registered["type"], registered["node_id"]) == ("node_registered", node_id)
    assert await peer.nothing(0.3)
