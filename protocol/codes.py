"""The stable codes of PROTOCOL.md: error codes in frames and WebSocket close codes."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Codes of ``error`` frames, ``job_rejected`` and scheduler-made ``job_result`` errors.

    Exactly the list of PROTOCOL.md "Framing"; a new code is a protocol change.
    """

    BAD_MESSAGE = "BAD_MESSAGE"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    NO_AVAILABLE_NODE = "NO_AVAILABLE_NODE"
    UNKNOWN_SERVICE = "UNKNOWN_SERVICE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    DEPENDENCY_DOWN = "DEPENDENCY_DOWN"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    MODEL_NOT_AVAILABLE = "MODEL_NOT_AVAILABLE"
    JOB_TIMEOUT = "JOB_TIMEOUT"
    CANCELLED = "CANCELLED"
    NODE_LOST = "NODE_LOST"
    JOB_LOST = "JOB_LOST"  # v1.1 §6


# The subsets PROTOCOL.md allows in particular fields.
REJECT_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NO_AVAILABLE_NODE,
        ErrorCode.UNKNOWN_SERVICE,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.RATE_LIMITED,
        ErrorCode.DEPENDENCY_DOWN,
        ErrorCode.BAD_MESSAGE,
    }
)
"""Codes a ``job_rejected`` may carry."""

CANCEL_REASONS: frozenset[ErrorCode] = frozenset(
    {ErrorCode.CANCELLED, ErrorCode.JOB_TIMEOUT, ErrorCode.NODE_LOST}
)
"""Reasons a ``job_cancel`` to a node may carry."""


class CloseCode(IntEnum):
    """WebSocket close codes with a meaning in PROTOCOL.md."""

    MESSAGE_TOO_BIG = 1009
    """A frame exceeded ``MAX_FRAME_BYTES``."""
    SERVICE_RESTART = 1012
    """The instance is stopping: reconnect (to any instance)."""
    UNAUTHORIZED = 4401
    """No, a bad or a late authenticating first frame."""
    REPLACED = 4409
    """A newer connection took this node token or ``session_id``."""
    RATE_LIMITED = 4429
    """Above the frame rate limit for too long."""
