"""Frames in and out: ``parse_inbound`` / ``parse_outbound`` and ``dump``.

Parsing is one pass in pydantic-core: each peer kind has a discriminated union on ``type``, built
once, and ``validate_json`` reads the raw frame straight into the model. Only a frame that fails
is read a second time (with ``json``) to find the ``ref`` of the error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError

from protocol.codes import ErrorCode
from protocol.messages import (
    Error,
    ErrorRef,
    Frame,
    JobAccepted,
    JobAck,
    JobAssign,
    JobRejected,
    JobStarted,
    JobSubmit,
    ModelNotAvailable,
    NodeDrain,
    NodeHeartbeat,
    NodeJobCancel,
    NodeJobProgress,
    NodeJobResult,
    NodeRegister,
    NodeRegistered,
    Ping,
    Pong,
    SessionInit,
    SessionJobCancel,
    SessionJobProgress,
    SessionJobResult,
    SessionReady,
)

Peer = Literal["node", "session"]

REF_FIELDS = ("type", "request_id", "job_id")
MAX_MESSAGE_CHARS = 300


class ProtocolError(Exception):
    """A frame that cannot be accepted; ``to_frame()`` is the ``error`` to answer with."""

    def __init__(self, code: ErrorCode, message: str, ref: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref: dict[str, str] = ref or {}

    def to_frame(self) -> Error:
        return Error(code=self.code, message=self.message, ref=ErrorRef(**self.ref))

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value}, {self.message!r}, {self.ref!r})"


def message_type(model: type[Frame]) -> str:
    """The ``type`` tag of a message class."""
    tag = model.model_fields["type"].default
    assert isinstance(tag, str), f"{model.__name__} is not a message"
    return tag


def _table(*models: type[Frame]) -> Mapping[str, type[Frame]]:
    table = {message_type(model): model for model in models}
    assert len(table) == len(models), "two messages of one direction share a type"
    return MappingProxyType(table)


NODE_INBOUND = _table(
    NodeRegister,
    NodeHeartbeat,
    JobAck,
    JobStarted,
    NodeJobProgress,
    NodeJobResult,
    ModelNotAvailable,
    NodeDrain,
    Ping,
)
"""What a node may send to the scheduler, by ``type``."""
SESSION_INBOUND = _table(SessionInit, JobSubmit, SessionJobCancel, Ping)
"""What a session may send to the scheduler, by ``type``."""
NODE_OUTBOUND = _table(NodeRegistered, JobAssign, NodeJobCancel, Error, Pong)
"""What the scheduler sends to a node, by ``type``."""
SESSION_OUTBOUND = _table(
    SessionReady, JobAccepted, JobRejected, SessionJobProgress, SessionJobResult, Error, Pong
)
"""What the scheduler sends to a session, by ``type``."""


def _adapter(table: Mapping[str, type[Frame]]) -> TypeAdapter[Frame]:
    union: Any = Union[tuple(table.values())]  # noqa: UP007 (built at run time)
    adapter: TypeAdapter[Frame] = TypeAdapter(Annotated[union, Field(discriminator="type")])
    return adapter


_INBOUND = {"node": _adapter(NODE_INBOUND), "session": _adapter(SESSION_INBOUND)}
_OUTBOUND = {"node": _adapter(NODE_OUTBOUND), "session": _adapter(SESSION_OUTBOUND)}


def parse_inbound(raw: str | bytes, *, peer: Peer) -> Frame:
    """A frame a ``peer`` sent to the scheduler, validated; else ``ProtocolError``.

    Not JSON or not an object: ``BAD_MESSAGE``; no ``type`` or one this peer may not send:
    ``UNKNOWN_TYPE``; a field that fails validation: ``BAD_MESSAGE`` naming the field.
    """
    return _parse(_INBOUND[peer], raw)


def parse_outbound(raw: str | bytes, *, peer: Peer) -> Frame:
    """A frame the scheduler sent to a ``peer`` (what the SDKs read); errors as parse_inbound."""
    return _parse(_OUTBOUND[peer], raw)


def dump(model: Frame) -> str:
    """Compact JSON for the wire; optional fields that are ``None`` are left out.

    Only fields of the models are dropped: a ``null`` inside ``payload``, ``result`` or ``data``
    is the client's data and is kept.
    """
    return model.model_dump_json(exclude_none=True)


def _parse(adapter: TypeAdapter[Frame], raw: str | bytes) -> Frame:
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        raise _error_from(exc, raw) from None


def _error_from(exc: ValidationError, raw: str | bytes) -> ProtocolError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    kind = first["type"]
    if kind == "json_invalid":
        return ProtocolError(ErrorCode.BAD_MESSAGE, _clip(f"not JSON: {first['msg']}"))
    ref = _ref_of(raw)
    if not first["loc"] and kind in ("dict_type", "model_type", "model_attributes_type"):
        return ProtocolError(ErrorCode.BAD_MESSAGE, "a frame must be a JSON object", ref)
    if kind == "union_tag_not_found":
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, "the frame has no string field 'type'", ref)
    if kind == "union_tag_invalid":
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, _clip(_unknown_type(raw)), ref)
    # loc starts with the type tag the union chose; the rest is the path to the field.
    tag, *path = first["loc"]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    message = f"{tag}{where}: {first['msg'].removeprefix('Value error, ')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ProtocolError(ErrorCode.BAD_MESSAGE, _clip(message), ref)


def _ref_of(raw: str | bytes) -> dict[str, str]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return {key: obj[key] for key in REF_FIELDS if isinstance(obj.get(key), str)}


def _unknown_type(raw: str | bytes) -> str:
    try:
        tag = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        tag = None
    return f"unknown type {tag!r}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
