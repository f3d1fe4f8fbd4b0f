"""The one family of domain failures, each tied to its PROTOCOL.md error code in one place.

Services raise ``SchedulerError`` subclasses, and let the hot state's refusals
(``hotstate.codes.Refused``) and outages (``hotstate.errors.DependencyDown``) pass through:
``error_reply`` maps all of them, so interfaces (consumers, views, commands) answer every
failure the same way with a code and a message. The HTTP status of each code is in
``HTTP_STATUS``.
"""

from __future__ import annotations

from hotstate import codes as hcodes
from hotstate.errors import DependencyDown
from protocol import ErrorCode


class SchedulerError(Exception):
    code = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self)


class BadMessage(SchedulerError):
    """The message is malformed."""

    code = ErrorCode.BAD_MESSAGE


class Unauthorized(SchedulerError):
    """The token or key is missing, unknown or disabled."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(SchedulerError):
    """The job is assigned to another node."""

    code = ErrorCode.FORBIDDEN


class NoAvailableNode(SchedulerError):
    """No online node can take this job now."""

    code = ErrorCode.NO_AVAILABLE_NODE


class UnknownService(SchedulerError):
    """No node has ever offered this service."""

    code = ErrorCode.UNKNOWN_SERVICE


class PayloadTooLarge(SchedulerError):
    """The payload is larger than MAX_PAYLOAD_BYTES."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class JobNotFound(SchedulerError):
    """No such job for this tenant (or it has already finished)."""

    code = ErrorCode.JOB_NOT_FOUND


class StaleAttempt(SchedulerError):
    """The reply names an attempt other than the job's current one."""

    code = ErrorCode.STALE_ATTEMPT


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.UNKNOWN_SERVICE: 404,
    ErrorCode.STALE_ATTEMPT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.NO_AVAILABLE_NODE: 503,
    ErrorCode.DEPENDENCY_DOWN: 503,
}


def refusal_error(exc: hcodes.Refused) -> SchedulerError | None:
    """The domain failure a hot-state refusal stands for, or None for ``BadState`` (a job that
    moved on is the caller's to judge, never the peer's fault)."""
    job = exc.subject
    if isinstance(exc, hcodes.JobNotFound):
        return JobNotFound(f"no job {job}")
    if isinstance(exc, hcodes.StaleAttempt):
        return StaleAttempt(f"job {job} is at attempt {exc.attempt}")
    if isinstance(exc, hcodes.Forbidden):
        return Forbidden(f"job {job} is not assigned to this node")
    return None


def error_reply(exc: BaseException) -> tuple[ErrorCode, str]:
    """The protocol code and message that answer ``exc``, for every interface.

    Anything that is not a known failure is an ``INTERNAL_ERROR`` whose message reveals nothing;
    the caller logs it.
    """
    if isinstance(exc, hcodes.Refused):
        exc = refusal_error(exc) or exc
    if isinstance(exc, SchedulerError):
        return exc.code, exc.message
    if isinstance(exc, DependencyDown):
        return ErrorCode.DEPENDENCY_DOWN, "the scheduler's state store is unavailable; retry"
    return ErrorCode.INTERNAL_ERROR, "internal error"
