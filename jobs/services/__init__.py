"""The job life cycle (writes), by concern.

Every state change is one hot-state script with a compare-and-set on the job's state, attempt
and node (``hotstate.jobs.job_transition``), which also records on the job what the move leaves
owed (release the slot, tell the node, deliver the result). Whoever's transition applies does
those follow-ups at once; the timer sweep redoes any a crash or a Redis error left
(``endings.job_followups``). Each is idempotent, so doing one twice is harmless. Imports
inside the package point one way: ``submit``, ``reports``, ``timers`` → ``dispatch`` → ``endings``.
"""

from __future__ import annotations

from jobs.services.dispatch import job_dispatch, job_failover, job_redispatch
from jobs.services.endings import job_cancel, job_end, job_followups
from jobs.services.reports import (
    job_ack,
    job_mna_handle,
    job_model_not_available,
    job_progress,
    job_result,
    job_started,
)
from jobs.services.submit import Accepted, job_submit, submit_validate
from jobs.services.timers import job_check

__all__ = [
    "Accepted",
    "job_ack",
    "job_cancel",
    "job_check",
    "job_dispatch",
    "job_end",
    "job_failover",
    "job_followups",
    "job_mna_handle",
    "job_model_not_available",
    "job_progress",
    "job_redispatch",
    "job_result",
    "job_started",
    "job_submit",
    "submit_validate",
]
