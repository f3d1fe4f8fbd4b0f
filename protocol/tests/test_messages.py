from __future__ import annotations

import json

import pytest

from protocol import (
    CANCEL_REASONS,
    MAX_SAFE_INT,
    NODE_INBOUND,
    NODE_OUTBOUND,
    REJECT_CODES,
    SESSION_INBOUND,
    SESSION_OUTBOUND,
    CloseCode,
    ErrorCode,
    Frame,
    JobSubmit,
    Peer,
    ServiceRef,
    dump,
    message_type,
    parse_inbound,
    parse_outbound,
)
from protocol.tests.samples import INBOUND, OUTBOUND


def _id(case: tuple[Peer, Frame]) -> str:
    peer, frame = case
    return f"{peer}-{message_type(type(frame))}"


@pytest.mark.parametrize("case", INBOUND, ids=_id)
def test_inbound_message_round_trips(case: tuple[Peer, Frame]) -> None:
    peer, frame = case
    assert parse_inbound(dump(frame), peer=peer) == frame
    assert parse_inbound(dump(frame).encode(), peer=peer) == frame


@pytest.mark.parametrize("case", OUTBOUND, ids=_id)
def test_outbound_message_round_trips(case: tuple[Peer, Frame]) -> None:
    peer, frame = case
    assert parse_outbound(dump(frame), peer=peer) == frame


def test_every_message_type_has_a_round_trip_sample() -> None:
    def covered(cases: list[tuple[Peer, Frame]], peer: Peer) -> set[str]:
        return {message_type(type(frame)) for p, frame in cases if p == peer}

    assert covered(INBOUND, "node") == set(NODE_INBOUND)
    assert covered(INBOUND, "session") == set(SESSION_INBOUND)
    assert covered(OUTBOUND, "node") == set(NODE_OUTBOUND)
    assert covered(OUTBOUND, "session") == set(SESSION_OUTBOUND)


def test_tables_hold_exactly_the_types_of_protocol_md() -> None:
    assert set(NODE_INBOUND) == {
        "node_register", "node_heartbeat", "job_ack", "job_started", "job_progress",
        "job_result", "model_not_available", "node_drain", "ping",
    }  # fmt: skip
    assert set(NODE_OUTBOUND) == {"node_registered", "job_assign", "job_cancel", "error", "pong"}
    assert set(SESSION_INBOUND) == {"session_init", "job_submit", "job_cancel", "ping"}
    assert set(SESSION_OUTBOUND) == {
        "session_ready", "job_accepted", "job_rejected", "job_progress", "job_result", "error",
        "pong",
    }  # fmt: skip


def test_dump_is_compact_and_omits_unset_optional_fields_but_keeps_nulls_in_payload() -> None:
    frame = JobSubmit(request_id="r1", service=ServiceRef(id="asr"), payload={"lang": None})
    assert dump(frame) == (
        '{"type":"job_submit","request_id":"r1","service":{"id":"asr"},"payload":{"lang":null}}'
    )


def test_error_codes_are_exactly_those_of_protocol_md() -> None:
    assert {code.value for code in ErrorCode} == {
        "BAD_MESSAGE", "UNKNOWN_TYPE", "UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED",
        "NO_AVAILABLE_NODE", "UNKNOWN_SERVICE", "PAYLOAD_TOO_LARGE", "JOB_NOT_FOUND",
        "STALE_ATTEMPT", "DEPENDENCY_DOWN", "INTERNAL_ERROR", "MODEL_NOT_AVAILABLE",
        "JOB_TIMEOUT", "CANCELLED", "NODE_LOST", "JOB_LOST",
    }  # fmt: skip
    assert {c.value for c in REJECT_CODES} == {
        "NO_AVAILABLE_NODE", "UNKNOWN_SERVICE", "PAYLOAD_TOO_LARGE", "RATE_LIMITED",
        "DEPENDENCY_DOWN", "BAD_MESSAGE",
    }  # fmt: skip
    assert {c.value for c in CANCEL_REASONS} == {"CANCELLED", "JOB_TIMEOUT", "NODE_LOST"}
    assert ErrorCode.BAD_MESSAGE == "BAD_MESSAGE"


def test_close_codes() -> None:
    assert {code.value for code in CloseCode} == {4401, 4409, 4429, 1009, 1012}
    assert CloseCode.UNAUTHORIZED == 4401
    assert CloseCode.REPLACED == 4409


# --- boundaries: (peer, frame as dict, field to change, value, accepted?) --------------------

HEARTBEAT = {"type": "node_heartbeat", "resources": {"cpu_pct": 1, "mem_pct": 1}, "running": []}
REGISTER = {
    "type": "node_register", "token": "t", "version": "1", "services": [{"id": "asr"}],
    "features": [], "max_jobs": 1, "resources": {"cpu_pct": 1, "mem_pct": 1},
}  # fmt: skip
ACK = {"type": "job_ack", "job_id": "j1", "attempt": 1}
PROGRESS = {"type": "job_progress", "job_id": "j1", "attempt": 1, "progress": 0.5}
SUBMIT = {"type": "job_submit", "request_id": "r1", "service": {"id": "asr"}, "payload": {}}
RESULT = {"type": "job_result", "job_id": "j1", "attempt": 1, "ok": True}


def _with(frame: dict[str, object], path: str, value: object) -> dict[str, object]:
    copy = json.loads(json.dumps(frame))
    *parents, leaf = path.split(".")
    target = copy
    for part in parents:
        target = target[part]
    target[leaf] = value
    return copy  # type: ignore[no-any-return]


BOUNDARIES = [
    (HEARTBEAT, "resources.cpu_pct", 0, True),
    (HEARTBEAT, "resources.cpu_pct", 100, True),
    (HEARTBEAT, "resources.cpu_pct", 99.99, True),
    (HEARTBEAT, "resources.cpu_pct", -0.01, False),
    (HEARTBEAT, "resources.mem_pct", 100.01, False),
    (HEARTBEAT, "resources.gpu_pct", 101, False),
    (HEARTBEAT, "resources.cpu_pct", "50", False),
    (HEARTBEAT, "resources.cpu_pct", None, False),
    (HEARTBEAT, "running", ["j1", 2], False),
    (HEARTBEAT, "running", [""], False),
    (HEARTBEAT, "max_jobs", 0, False),
    (REGISTER, "max_jobs", 1, True),
    (REGISTER, "max_jobs", 0, False),
    (REGISTER, "max_jobs", -1, False),
    (REGISTER, "max_jobs", 2.0, False),
    (REGISTER, "max_jobs", "2", False),
    (REGISTER, "max_jobs", True, False),
    (REGISTER, "token", "", False),
    (REGISTER, "services", [{"id": 5}], False),
    (REGISTER, "services", [{"version": "1"}], False),
    (ACK, "attempt", 1, True),
    (ACK, "attempt", MAX_SAFE_INT, True),
    (ACK, "attempt", MAX_SAFE_INT + 1, False),
    (ACK, "attempt", 0, False),
    (ACK, "job_id", 17, False),
    (ACK, "job_id", "", False),
    (PROGRESS, "progress", 0, True),
    (PROGRESS, "progress", 1, True),
    (PROGRESS, "progress", 1.0001, False),
    (PROGRESS, "progress", -0.0001, False),
    (PROGRESS, "data", [1], False),
    (RESULT, "ok", 1, False),
    (RESULT, "result", "text", False),
    (RESULT, "error", {"code": "", "message": "m"}, False),
    (SUBMIT, "timeout_ms", 1, True),
    (SUBMIT, "timeout_ms", 0, False),
    (SUBMIT, "timeout_ms", 1000.0, False),
    (SUBMIT, "request_id", 5, False),
    (SUBMIT, "payload", None, False),
    (SUBMIT, "payload", [], False),
    (SUBMIT, "features", "fp16", False),
    (SUBMIT, "brand_new_optional_field", {"x": 1}, True),
    (SUBMIT, "service.brand_new_optional_field", 1, True),
]


@pytest.mark.parametrize(
    ("frame", "path", "value", "accepted"),
    BOUNDARIES,
    ids=[f"{f['type']}.{p}={v!r}" for f, p, v, _ in BOUNDARIES],
)
def test_boundary_values(
    frame: dict[str, object], path: str, value: object, accepted: bool
) -> None:
    peer: Peer = "session" if frame["type"] == "job_submit" else "node"
    raw = json.dumps(_with(frame, path, value))
    if accepted:
        parse_inbound(raw, peer=peer)
        return
    with pytest.raises(Exception) as caught:
        parse_inbound(raw, peer=peer)
    assert getattr(caught.value, "code", None) == ErrorCode.BAD_MESSAGE
    assert path.split(".")[-1] in str(caught.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    raw = PROGRESS | {"progress": 0}
    text = json.dumps(raw).replace('"progress": 0', f'"progress": {literal}')
    with pytest.raises(Exception, match="progress") as caught:
        parse_inbound(text, peer="node")
    assert getattr(caught.value, "code", None) == ErrorCode.BAD_MESSAGE


def test_unknown_fields_are_dropped_not_kept() -> None:
    frame = parse_inbound(json.dumps(ACK | {"future": 1}), peer="node")
    assert dump(frame) == '{"type":"job_ack","job_id":"j1","attempt":1}'


def test_model_not_available_needs_attempt_with_job_id() -> None:
    raw = {"type": "model_not_available", "job_id": "j1", "service": {"id": "asr"}, "reason": "x"}
    with pytest.raises(Exception, match="attempt is required with job_id"):
        parse_inbound(json.dumps(raw), peer="node")
    parse_inbound(json.dumps(raw | {"attempt": 2}), peer="node")


def test_job_rejected_and_job_cancel_codes_are_restricted() -> None:
    rejected = {"type": "job_rejected", "request_id": "r1", "message": "m"}
    parse_outbound(json.dumps(rejected | {"code": "RATE_LIMITED"}), peer="session")
    with pytest.raises(Exception, match="code: must be one of"):
        parse_outbound(json.dumps(rejected | {"code": "CANCELLED"}), peer="session")
    cancel = {"type": "job_cancel", "job_id": "j1", "attempt": 1}
    parse_outbound(json.dumps(cancel | {"reason": "NODE_LOST"}), peer="node")
    with pytest.raises(Exception, match="reason: must be one of"):
        parse_outbound(json.dumps(cancel | {"reason": "BAD_MESSAGE"}), peer="node")


def test_models_are_frozen() -> None:
    frame = ServiceRef(id="asr")
    with pytest.raises(ValueError, match="frozen"):
        frame.id = "nmt"  # type: ignore[misc]
