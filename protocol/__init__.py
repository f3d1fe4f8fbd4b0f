"""The wire contract of PROTOCOL.md as code; no Django, importable by any client.

- ``protocol.messages``: one frozen, strict pydantic model per message type.
- ``protocol.codes``: ``ErrorCode`` (exactly PROTOCOL.md's codes) and ``CloseCode``.
- ``protocol.parse``: ``parse_inbound`` (what peers send, for the scheduler), ``parse_outbound``
  (what the scheduler sends, for clients and SDKs) and ``dump``.

Unknown fields are ignored, not refused. PROTOCOL.md grows by *new optional fields*; a peer built
against a later version must keep working with a scheduler that does not know them yet, and the
SDKs likewise keep working with a newer scheduler. Forbidding extras would turn every such
addition into a flag day. The price is that a misspelt *optional* field is silently dropped; a
misspelt required field still fails, every known field is type-checked strictly, and code that
builds frames is checked by mypy (pydantic models have typed constructors).
"""

from __future__ import annotations

from protocol.codes import CANCEL_REASONS, REJECT_CODES, CloseCode, ErrorCode
from protocol.messages import (
    MAX_AWAITING,
    MAX_SAFE_INT,
    Error,
    ErrorRef,
    Frame,
    JobAccepted,
    JobAck,
    JobAssign,
    JobError,
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
    Resources,
    ServiceRef,
    SessionInit,
    SessionJobCancel,
    SessionJobProgress,
    SessionJobResult,
    SessionReady,
)
from protocol.parse import (
    NODE_INBOUND,
    NODE_OUTBOUND,
    SESSION_INBOUND,
    SESSION_OUTBOUND,
    Peer,
    ProtocolError,
    dump,
    message_type,
    parse_inbound,
    parse_outbound,
)

PROTOCOL_VERSION = 1

__all__ = [
    "CANCEL_REASONS",
    "MAX_AWAITING",
    "MAX_SAFE_INT",
    "NODE_INBOUND",
    "NODE_OUTBOUND",
    "PROTOCOL_VERSION",
    "REJECT_CODES",
    "SESSION_INBOUND",
    "SESSION_OUTBOUND",
    "CloseCode",
    "Error",
    "ErrorCode",
    "ErrorRef",
    "Frame",
    "JobAccepted",
    "JobAck",
    "JobAssign",
    "JobError",
    "JobRejected",
    "JobStarted",
    "JobSubmit",
    "ModelNotAvailable",
    "NodeDrain",
    "NodeHeartbeat",
    "NodeJobCancel",
    "NodeJobProgress",
    "NodeJobResult",
    "NodeRegister",
    "NodeRegistered",
    "Peer",
    "Ping",
    "Pong",
    "ProtocolError",
    "Resources",
    "ServiceRef",
    "SessionInit",
    "SessionJobCancel",
    "SessionJobProgress",
    "SessionJobResult",
    "SessionReady",
    "dump",
    "message_type",
    "parse_inbound",
    "parse_outbound",
]
