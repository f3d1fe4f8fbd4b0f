from __future__ import annotations

import json

import pytest

from protocol import (
    ErrorCode,
    JobAck,
    NodeDrain,
    Peer,
    ProtocolError,
    dump,
    parse_inbound,
    parse_outbound,
)


def _refused(raw: str | bytes, peer: Peer = "node") -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_inbound(raw, peer=peer)
    return caught.value


@pytest.mark.parametrize(
    "raw", ["", "not json", "{", '{"type": "job_ack",}', b"\xff\xfe\x00", "{'type': 'ping'}"]
)
def test_not_json_is_bad_message_with_empty_ref(raw: str | bytes) -> None:
    error = _refused(raw)
    assert (error.code, error.ref) == (ErrorCode.BAD_MESSAGE, {})
    assert error.message.startswith("not JSON")


@pytest.mark.parametrize("raw", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_bad_message(raw: str) -> None:
    error = _refused(raw)
    assert (error.code, error.ref) == (ErrorCode.BAD_MESSAGE, {})
    assert error.message == "a frame must be a JSON object"


@pytest.mark.parametrize(
    ("frame", "ref"),
    [
        ({}, {}),
        ({"job_id": "j1", "attempt": 1}, {"job_id": "j1"}),
        ({"type": None, "request_id": "r1"}, {"request_id": "r1"}),
        ({"type": 7, "job_id": "j1"}, {"job_id": "j1"}),
        ({"type": "job_explode", "job_id": "j1"}, {"type": "job_explode", "job_id": "j1"}),
        ({"type": "JOB_ACK", "job_id": "j1", "attempt": 1}, {"type": "JOB_ACK", "job_id": "j1"}),
    ],
)
def test_missing_or_unknown_type_is_unknown_type(
    frame: dict[str, object], ref: dict[str, str]
) -> None:
    error = _refused(json.dumps(frame))
    assert (error.code, error.ref) == (ErrorCode.UNKNOWN_TYPE, ref)


@pytest.mark.parametrize(
    ("peer", "frame"),
    [
        ("session", {"type": "node_register", "token": "t"}),
        ("session", {"type": "job_ack", "job_id": "j1", "attempt": 1}),
        ("node", {"type": "job_submit", "request_id": "r1"}),
        ("node", {"type": "session_init", "api_key": "k"}),
        ("node", {"type": "job_assign", "job_id": "j1"}),
        ("session", {"type": "job_result", "job_id": "j1"}),
        ("node", {"type": "pong", "ts_ms": 1}),
        ("session", {"type": "error", "code": "BAD_MESSAGE", "message": "m"}),
    ],
)
def test_a_type_the_peer_may_not_send_is_unknown_type(peer: Peer, frame: dict[str, str]) -> None:
    error = _refused(json.dumps(frame), peer=peer)
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert error.ref["type"] == frame["type"]
    assert error.message == f"unknown type {frame['type']!r}"


def test_validation_failure_names_the_field_and_carries_the_ref() -> None:
    raw = {
        "type": "job_submit", "request_id": "r9", "service": {"id": "asr"},
        "payload": {}, "timeout_ms": -5,
    }  # fmt: skip
    error = _refused(json.dumps(raw), peer="session")
    assert error.code == ErrorCode.BAD_MESSAGE
    assert error.ref == {"type": "job_submit", "request_id": "r9"}
    assert error.message == "job_submit.timeout_ms: Input should be greater than 0"


def test_nested_and_listed_field_paths_are_named() -> None:
    raw = {
        "type": "node_register", "token": "t", "version": "1", "max_jobs": 1, "features": [],
        "services": [{"id": "asr"}, {"id": ""}], "resources": {"cpu_pct": 1, "mem_pct": 1},
    }  # fmt: skip
    error = _refused(json.dumps(raw))
    assert error.message.startswith("node_register.services[1].id: String should have at least")


def test_several_failures_are_counted_in_one_message() -> None:
    error = _refused(json.dumps({"type": "job_ack"}))
    assert error.message == "job_ack.job_id: Field required (and 1 more)"


def test_ref_holds_only_string_ids_that_could_be_read() -> None:
    raw = {"type": "job_result", "job_id": 12, "request_id": ["r"], "attempt": 1, "ok": True}
    error = _refused(json.dumps(raw))
    assert error.ref == {"type": "job_result"}


def test_message_of_a_huge_bad_frame_stays_short() -> None:
    error = _refused(json.dumps({"type": "x" * 10_000}))
    assert len(error.message) <= 300


def test_protocol_error_becomes_an_error_frame() -> None:
    error = _refused('{"type": "job_ack", "job_id": "j1", "attempt": 0}')
    assert json.loads(dump(error.to_frame())) == {
        "type": "error",
        "code": "BAD_MESSAGE",
        "message": "job_ack.attempt: Input should be greater than or equal to 1",
        "ref": {"type": "job_ack", "job_id": "j1"},
    }


def test_a_frame_parses_into_its_model() -> None:
    assert parse_inbound('{"type":"node_drain"}', peer="node") == NodeDrain()
    assert parse_inbound(b'{"type":"job_ack","job_id":"j","attempt":2}', peer="node") == JobAck(
        job_id="j", attempt=2
    )


def test_parse_outbound_reports_like_parse_inbound() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_outbound('{"type": "job_submit"}', peer="session")
    assert caught.value.code == ErrorCode.UNKNOWN_TYPE
