"""What a handler's end becomes: the ``job_result`` to send, or a ``model_not_available``.

A handler that returns a JSON object succeeds; ``JobFailed`` fails the job with the handler's
code; ``ModelNotAvailable`` hands the job back. Anything else fails it with a code of this SDK:
``INTERNAL_ERROR`` (it crashed), ``BAD_RESULT`` (not a JSON object), ``RESULT_TOO_LARGE``.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

import protocol as p
from scheduler_sdk.node.job import Handler, Job, JobFailed, ModelNotAvailable
from scheduler_sdk.node.stats import NodeStats

logger = logging.getLogger(__name__)

MAX_ERROR_MESSAGE_CHARS = 500

# Codes this SDK puts in job_result.error when the handler did not supply one.
HANDLER_CRASHED = "INTERNAL_ERROR"
BAD_RESULT = "BAD_RESULT"
RESULT_TOO_LARGE = "RESULT_TOO_LARGE"


async def run_handler(
    handler: Handler, job: Job, *, stats: NodeStats, max_frame_bytes: int
) -> tuple[str, bool]:
    """Run ``handler`` on ``job``: its final frame, serialized, and whether it is a ``job_result``.

    Counts the outcome in ``stats``; a result over ``max_frame_bytes`` is replaced by an error.
    """
    raw = await _result(handler, job, stats, max_frame_bytes)
    return (raw, True) if isinstance(raw, str) else (p.dump(raw), False)


async def _result(
    handler: Handler, job: Job, stats: NodeStats, max_frame_bytes: int
) -> str | p.ModelNotAvailable:
    """The serialized ``job_result`` for ``job``, or the model_not_available to send."""
    try:
        result = await handler(job)
    except JobFailed as exc:
        stats.jobs_failed += 1
        return _failure(job, exc.code, exc.message)
    except ModelNotAvailable as exc:
        stats.jobs_unavailable += 1
        return p.ModelNotAvailable(
            job_id=job.job_id, attempt=job.attempt, service=job.service, reason=exc.reason
        )
    except Exception as exc:
        logger.exception("handler of job %s (%s) crashed", job.job_id, job.service.id)
        stats.jobs_failed += 1
        return _failure(job, HANDLER_CRASHED, f"{type(exc).__name__}: {exc}")
    if not isinstance(result, dict):
        stats.jobs_failed += 1
        return _failure(job, BAD_RESULT, f"handler returned {type(result).__name__}")
    try:
        raw = p.dump(
            p.NodeJobResult(job_id=job.job_id, attempt=job.attempt, ok=True, result=result)
        )
    except (ValidationError, PydanticSerializationError) as exc:
        stats.jobs_failed += 1
        return _failure(job, BAD_RESULT, f"result is not a JSON object: {exc}")
    if len(raw.encode()) > max_frame_bytes:
        stats.jobs_failed += 1
        return _failure(job, RESULT_TOO_LARGE, f"result is over {max_frame_bytes} bytes")
    stats.jobs_succeeded += 1
    return raw


def _failure(job: Job, code: str, message: str) -> str:
    error = p.JobError(code=code, message=message[:MAX_ERROR_MESSAGE_CHARS])
    return p.dump(p.NodeJobResult(job_id=job.job_id, attempt=job.attempt, ok=False, error=error))
