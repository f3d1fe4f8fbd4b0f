"""Domain failures raised by services, each tied to its PROTOCOL.md error code in one place.

Interfaces (consumers, views, commands) catch ``SchedulerError`` and answer with ``code`` and
``message``; the HTTP status for each code is in ``HTTP_STATUS``.
"""

from __future__ import annotations


class SchedulerError(Exception):
    code = "INTERNAL_ERROR"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self)


class BadMessage(SchedulerError):
    """The message is malformed."""

    code = "BAD_MESSAGE"


class Unauthorized(SchedulerError):
    """The token or key is missing, unknown or disabled."""

    code = "UNAUTHORIZED"


class Forbidden(SchedulerError):
    """The job is assigned to another node."""

    code = "FORBIDDEN"


class RateLimited(SchedulerError):
    """Too many messages; slow down."""

    code = "RATE_LIMITED"


class NoAvailableNode(SchedulerError):
    """No online node can take this job now."""

    code = "NO_AVAILABLE_NODE"


class UnknownService(SchedulerError):
    """No node has ever offered this service."""

    code = "UNKNOWN_SERVICE"


class PayloadTooLarge(SchedulerError):
    """The payload is larger than MAX_PAYLOAD_BYTES."""

    code = "PAYLOAD_TOO_LARGE"


class JobNotFound(SchedulerError):
    """No such job for this tenant (or it has already finished)."""

    code = "JOB_NOT_FOUND"


class StaleAttempt(SchedulerError):
    """The reply names an attempt other than the job's current one."""

    code = "STALE_ATTEMPT"


class DependencyUnavailable(SchedulerError):
    """A dependency of the scheduler (Redis Cluster) is unavailable; try again shortly."""

    code = "DEPENDENCY_DOWN"


HTTP_STATUS: dict[str, int] = {
    "BAD_MESSAGE": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "JOB_NOT_FOUND": 404,
    "UNKNOWN_SERVICE": 404,
    "STALE_ATTEMPT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "INTERNAL_ERROR": 500,
    "NO_AVAILABLE_NODE": 503,
    "DEPENDENCY_DOWN": 503,
}
