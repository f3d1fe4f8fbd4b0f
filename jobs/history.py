"""Durable job history: ended jobs are written to SQL in batches, off the hot path."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from channels.db import database_sync_to_async

from core.state import STATE
from hotstate.jobs import JobView
from jobs.models import JobRecord

logger = logging.getLogger(__name__)

MAX_PENDING = 50_000


@dataclass
class HistoryBacklog:
    """Ended jobs not yet written, by job id (a part of ``STATE``)."""

    pending: dict[str, JobView] = field(default_factory=dict)


def history_record(*, job: JobView) -> None:
    """Queue an ended job for the next flush (the history duty runs it every second)."""
    pending = STATE.part(HistoryBacklog).pending
    if len(pending) >= MAX_PENDING:
        logger.warning("job history backlog full; job %s not recorded", job.job_id)
        return
    pending[job.job_id] = job


def _when(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _record(job: JobView) -> JobRecord:
    return JobRecord(
        job_id=job.job_id,
        request_id=job.request_id,
        tenant=job.tenant,
        session_id=job.session_id,
        service_id=job.service_id,
        service_version=job.service_version or "",
        state=job.state.value,
        attempts=job.attempt,
        node_id=job.node_id or "",
        error_code=job.error_code or "",
        result_size=len(job.result_json.encode()) if job.result_json else None,
        created_at=_when(job.created_ms),
        finished_at=_when(job.finished_ms or job.updated_ms),
    )


def _write(records: list[JobRecord]) -> None:
    JobRecord.objects.bulk_create(
        records,
        update_conflicts=True,
        unique_fields=["job_id"],
        update_fields=[
            "state",
            "attempts",
            "node_id",
            "error_code",
            "result_size",
            "finished_at",
        ],
    )


async def history_flush() -> int:
    """Write the queued records; returns how many. A failed write keeps them for next time."""
    pending = STATE.part(HistoryBacklog).pending
    if not pending:
        return 0
    batch = list(pending.values())
    pending.clear()
    try:
        await database_sync_to_async(_write)([_record(job) for job in batch])
    except Exception:
        for job in batch:
            pending.setdefault(job.job_id, job)
        raise
    return len(batch)
