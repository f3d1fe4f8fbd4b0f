"""What a handler sees (``Job``) and what it raises to end a job other than with a result."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import protocol as p

JsonObject = dict[str, Any]
Handler = Callable[["Job"], Awaitable[JsonObject]]
ProgressSink = Callable[["Job", float, JsonObject | None], Awaitable[bool]]
"""Where ``Job.progress`` goes: the node's job table, which may drop it."""


class JobFailed(Exception):
    """Raise from a handler to end the job with ``job_result{ok:false, error:{code, message}}``.

    ``code`` is the node's own, stable, SCREAMING_SNAKE code (``BAD_AUDIO``); the session sees it.
    """

    def __init__(self, code: str, message: str = "") -> None:
        if not code:
            raise ValueError("JobFailed needs a code")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ModelNotAvailable(Exception):
    """Raise from a handler when this node cannot serve the job's service now.

    The agent sends ``model_not_available`` instead of a result: the scheduler marks the node
    unavailable for the service for a while and gives the job to another node.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Job:
    """One assignment, as a handler sees it."""

    __slots__ = (
        "_progress",
        "attempt",
        "deadline_ms",
        "features",
        "job_id",
        "payload",
        "service",
    )

    def __init__(self, assign: p.JobAssign, progress: ProgressSink) -> None:
        self.job_id = assign.job_id
        self.attempt = assign.attempt
        self.service = assign.service
        self.features = tuple(assign.features)
        self.payload = assign.payload
        self.deadline_ms = assign.deadline_ms
        self._progress = progress

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, attempt={self.attempt}, service={self.service.id!r})"

    @property
    def remaining_s(self) -> float:
        """Seconds until the scheduler's deadline, by this machine's clock."""
        return self.deadline_ms / 1000 - time.time()

    async def progress(self, progress: float, data: JsonObject | None = None) -> bool:
        """Report progress 0..1 (and optional data) to the session; True if it was sent.

        Progress is best effort: it is dropped while disconnected and when reported more often
        than the agent's ``progress_interval_s`` (except ``1.0``), so a chatty handler cannot
        push the connection over the scheduler's frame rate limit.
        """
        if not 0 <= progress <= 1:
            raise ValueError(f"progress must be within 0..1, not {progress!r}")
        return await self._progress(self, progress, data)
