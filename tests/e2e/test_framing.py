"""PROTOCOL.md "Framing" and "HTTP" as a raw client sees them on a real daphne: authentication,
bad frames, limits, replacement and the HTTP API's refusals."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.harness.deployment import System
from tests.e2e.harness.http import http
from tests.e2e.harness.peers import Peers
from tests.e2e.harness.raw import RESOURCES, RawPeer

pytestmark = pytest.mark.e2e

MAX_FRAME_BYTES = 65_536
MAX_PAYLOAD_BYTES = 8_192
AUTH_TIMEOUT_S = 1.0
# Daphne's own --websocket_max_message_size default: frames above it never reach the consumer.
DAPHNE_MAX_MESSAGE_BYTES = 1 << 20
E2E_ENV = {
    "MAX_FRAME_BYTES": str(MAX_FRAME_BYTES),
    "MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
    "AUTH_TIMEOUT": str(AUTH_TIMEOUT_S),
}


@pytest.fixture(scope="module")
def node_tokens(e2e_system: System) -> list[str]:
    """Node tokens for the module's tests, made in one go (each test pops its own)."""
    return e2e_system.node_tokens(4)


def submit_frame(request_id: str, payload: object, service: str = "asr") -> dict:
    return {
        "type": "job_submit",
        "request_id": request_id,
        "service": {"id": service},
        "payload": payload,
    }


def padded_submit(request_id: str, size: int, filler: str = "x", service: str = "asr") -> str:
    """A ``job_submit`` of exactly ``size`` bytes on the wire (UTF-8), padded in its payload."""
    bare = json.dumps(submit_frame(request_id, {"pad": ""}, service), ensure_ascii=False)
    room = size - len(bare.encode())
    per_char = len(filler.encode())
    assert room >= 0 and room % per_char == 0, (room, per_char)
    padded = submit_frame(request_id, {"pad": filler * (room // per_char)}, service)
    frame = json.dumps(padded, ensure_ascii=False)
    assert len(frame.encode()) == size
    return frame


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "first_frame"),
    [
        pytest.param("session", submit_frame("r1", {}), id="session-submit-before-init"),
        pytest.param("session", "{not json", id="session-not-json"),
        pytest.param(
            "session", {"type": "session_init", "api_key": "sk_wrong"}, id="session-bad-key"
        ),
        pytest.param("session", {"type": "session_init"}, id="session-init-without-key"),
        pytest.param("session", {"type": "nonsense"}, id="session-unknown-type"),
        pytest.param(
            "node",
            {
                "type": "node_register",
                "token": "nt_wrong",
                "version": "e2e",
                "services": [{"id": "asr"}],
                "features": [],
                "max_jobs": 1,
                "resources": {"cpu_pct": 1, "mem_pct": 1},
            },
            id="node-bad-token",
        ),
        pytest.param("node", {"type": "session_init", "api_key": "x"}, id="node-session-init"),
    ],
)
async def test_a_bad_first_frame_gets_unauthorized_and_close_4401(
    e2e_system: System, peers: Peers, endpoint: str, first_frame: dict | str
) -> None:
    peer = peers.track(await RawPeer.open(f"{e2e_system.ws}/ws/{endpoint}/"))
    await peer.send(first_frame)
    assert await peer.wait_closed() == 4401
    assert [f["type"] for f in peer.frames] == ["error"]
    assert peer.frames[0]["code"] == "UNAUTHORIZED"


async def test_a_peer_silent_past_auth_timeout_is_closed_with_4401(
    e2e_system: System, peers: Peers
) -> None:
    loop = asyncio.get_running_loop()
    opened = loop.time()
    peer = peers.track(await RawPeer.open(f"{e2e_system.ws}/ws/session/"))
    assert await peer.wait_closed(timeout=AUTH_TIMEOUT_S + 4) == 4401
    assert loop.time() - opened >= AUTH_TIMEOUT_S * 0.9
    assert peer.frames == []  # no frame arrived, so no error frame either


async def test_a_browser_origin_must_be_an_allowed_host(e2e_system: System, peers: Peers) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await RawPeer.open(f"{e2e_system.ws}/ws/session/", origin="http://evil.example")
    assert refused.value.response.status_code == 403
    allowed = peers.track(
        await RawPeer.open(f"{e2e_system.ws}/ws/session/", origin="http://127.0.0.1")
    )
    await allowed.send({"type": "session_init", "api_key": "sk_wrong"})
    assert await allowed.wait_closed() == 4401  # accepted, then judged by its first frame


# --- bad frames after authentication ------------------------------------------------------------


async def test_bad_session_frames_get_an_error_with_ref_and_change_nothing(
    e2e_system: System, peers: Peers, api_key: str
) -> None:
    session = await peers.session(e2e_system, api_key)

    await session.send("{not json")
    await session.expect_error("BAD_MESSAGE")
    await session.send("[1, 2]")
    await session.expect_error("BAD_MESSAGE")
    await session.send({"request_id": "r-no-type"})
    await session.expect_error("UNKNOWN_TYPE", request_id="r-no-type")
    await session.send({"type": "frobnicate", "request_id": "r-unknown", "job_id": "j-x"})
    await session.expect_error(
        "UNKNOWN_TYPE", type="frobnicate", request_id="r-unknown", job_id="j-x"
    )
    # A node's message on the session endpoint is a type this peer may not send.
    await session.send({"type": "job_ack", "job_id": "j-node", "attempt": 1})
    await session.expect_error("UNKNOWN_TYPE", type="job_ack", job_id="j-node")
    await session.send(submit_frame("r-bad-payload", "not an object"))
    await session.expect_error("BAD_MESSAGE", type="job_submit", request_id="r-bad-payload")
    await session.send({**submit_frame("r-bad-timeout", {}), "timeout_ms": "soon"})
    await session.expect_error("BAD_MESSAGE", type="job_submit", request_id="r-bad-timeout")
    await session.send({"type": "job_cancel", "job_id": "j_does_not_exist"})
    await session.expect_error("JOB_NOT_FOUND", type="job_cancel", job_id="j_does_not_exist")

    # Still open and served; a valid submit is judged normally (no node offers this service).
    await session.ping(ts_ms=12345)
    await session.submit("r-valid", "no-such-service-anywhere")
    rejected = await session.reply("r-valid")
    assert rejected["type"] == "job_rejected" and rejected["code"] == "UNKNOWN_SERVICE", rejected
    # None of the bad frames got anything but its one error.
    assert session.count("job_accepted") == 0
    assert len(session.errors()) == 8, session.errors()
    assert not session.closed


async def test_bad_node_frames_get_an_error_and_change_nothing(
    e2e_system: System, peers: Peers, node_tokens: list[str]
) -> None:
    token = node_tokens.pop()
    node = await peers.node(e2e_system, token, ["e2e-framing"])

    await node.send("{not json")
    await node.expect_error("BAD_MESSAGE")
    await node.send({"type": "job_submit", "request_id": "r"})  # a session's message
    await node.expect_error("UNKNOWN_TYPE", type="job_submit")
    await node.send({"type": "job_ack", "job_id": "j_x", "attempt": 0})  # attempt ≥ 1
    await node.expect_error("BAD_MESSAGE", type="job_ack", job_id="j_x")
    await node.report("job_result", "j_unknown", 1, ok=True, result={})
    await node.expect_error("JOB_NOT_FOUND", job_id="j_unknown")
    await node.send({"type": "node_register", "token": token})  # only as the first frame
    await node.expect_error("BAD_MESSAGE", type="node_register")

    await node.ping(ts_ms=7)
    await node.send({"type": "node_heartbeat", "resources": RESOURCES, "running": []})
    assert not node.closed


# --- limits -------------------------------------------------------------------------------------


# A frame over daphne's own websocket_max_message_size never reaches the consumer: autobahn
# refuses it, and scheduler_project.daphne_compat makes it close with 1009 rather than drop TCP.
@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            padded_submit("r-big", MAX_FRAME_BYTES + 1),
            id="one-byte-over",
        ),
        # Fewer characters than the limit, more bytes: the limit is measured on the wire.
        pytest.param(
            padded_submit("r-utf8", MAX_FRAME_BYTES + 20, filler="é"),
            id="utf8-over",
        ),
        pytest.param(
            padded_submit("r-huge", DAPHNE_MAX_MESSAGE_BYTES + 1000),
            id="over-daphne-limit",
        ),
    ],
)
async def test_a_frame_over_max_frame_bytes_closes_with_1009(
    e2e_system: System, peers: Peers, api_key: str, frame: str
) -> None:
    session = await peers.session(e2e_system, api_key)
    await session.send(frame)
    assert await session.wait_closed() == 1009
    assert session.count("job_accepted") + session.count("job_rejected") == 0


async def test_a_frame_at_the_limit_is_read_and_its_large_payload_rejected(
    e2e_system: System, peers: Peers, api_key: str, node_tokens: list[str]
) -> None:
    # A node offers the service, so that nothing but the payload's size can refuse the job.
    await peers.node(e2e_system, node_tokens.pop(), ["e2e-limit"])
    session = await peers.session(e2e_system, api_key)
    await session.send(padded_submit("r-at-limit", MAX_FRAME_BYTES, service="e2e-limit"))
    rejected = await session.reply("r-at-limit")
    assert rejected["type"] == "job_rejected", rejected
    assert rejected["code"] == "PAYLOAD_TOO_LARGE"
    await session.ping(ts_ms=1)


async def test_a_peer_over_its_frame_rate_gets_rate_limited_and_stays_open(
    e2e_system: System, peers: Peers, api_key: str
) -> None:
    session = await peers.session(e2e_system, api_key)
    for n in range(130):  # the burst is 100
        await session.send({"type": "ping", "ts_ms": n})
    await session.expect_error("RATE_LIMITED", type="ping")
    await asyncio.sleep(1.0)  # the bucket refills at 50 frames/s
    await session.ping(ts_ms=999_999)
    assert not session.closed


# --- replacement --------------------------------------------------------------------------------


async def test_a_newer_connection_replaces_the_older_with_4409(
    e2e_system: System, peers: Peers, api_key: str, node_tokens: list[str]
) -> None:
    first = await peers.session(e2e_system, api_key)
    second = await peers.session(e2e_system, api_key, first.session_id)
    assert second.session_id == first.session_id
    assert await first.wait_closed() == 4409
    await second.ping(ts_ms=2)

    token = node_tokens.pop()
    node = await peers.node(e2e_system, token, ["e2e-replace"])
    newer = await peers.node(e2e_system, token, ["e2e-replace"])
    assert newer.node_id == node.node_id  # the token names one node record
    assert await node.wait_closed() == 4409
    await newer.ping(ts_ms=3)


# --- HTTP ---------------------------------------------------------------------------------------


async def test_http_refuses_missing_and_bad_keys_and_bad_bodies(
    e2e_system: System, peers: Peers, api_key: str, node_tokens: list[str]
) -> None:
    # A node offers the service, so that each refusal below has exactly one cause.
    await peers.node(e2e_system, node_tokens.pop(), ["e2e-http"])
    jobs = f"{e2e_system.url}/api/v1/jobs"
    body = {"request_id": "h1", "service": {"id": "e2e-http"}, "payload": {}}

    def call(method: str, url: str, **kwargs: object) -> tuple[int, dict]:
        return http(method, url, **kwargs)  # type: ignore[arg-type]

    cases = [
        (("POST", jobs), {"body": body}, 401, "UNAUTHORIZED"),
        (("POST", jobs), {"body": body, "api_key": "sk_wrong"}, 401, "UNAUTHORIZED"),
        (("GET", f"{jobs}/j_x"), {"api_key": "sk_wrong"}, 401, "UNAUTHORIZED"),
        (("POST", f"{jobs}/j_x/cancel/"), {}, 401, "UNAUTHORIZED"),
        (("POST", jobs), {"raw": b"{not json", "api_key": api_key}, 400, "BAD_MESSAGE"),
        (
            ("POST", jobs),
            {"body": {"service": {"id": "e2e-http"}, "payload": {}}, "api_key": api_key},
            400,
            "BAD_MESSAGE",
        ),
        (
            ("POST", f"{jobs}/"),
            {"body": {**body, "service": {"id": "no-such-service"}}, "api_key": api_key},
            404,
            "UNKNOWN_SERVICE",
        ),
        (
            ("POST", jobs),
            {"body": {**body, "payload": {"pad": "x" * MAX_PAYLOAD_BYTES}}, "api_key": api_key},
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (("GET", f"{jobs}/j_does_not_exist"), {"api_key": api_key}, 404, "JOB_NOT_FOUND"),
    ]
    for (method, url), kwargs, status, code in cases:
        got_status, got = await asyncio.to_thread(call, method, url, **kwargs)
        assert (got_status, got.get("code")) == (status, code), (method, url, got)
