"""The background duties every scheduler process runs (see ``runtime``).

None of them needs a leader: timers are claimed atomically per shard, MODEL_NOT_AVAILABLE
reports are shared out by a consumer group, and the rest is per process. The directory prune is
the one periodic clean-up that only one process should do at a time; it takes the leader lock.
"""

from __future__ import annotations

import logging

from django.conf import settings

from hotstate import instances as howners
from hotstate import mna as hmna
from hotstate import nodes as hnodes
from hotstate import timers as htimers
from jobs import services as jobs
from jobs.history import history_flush
from nodes.snapshot import REFRESH_INTERVAL_S, snapshot_refresh
from scheduler_project.runtime import INSTANCE_ID, Duty, now_ms

logger = logging.getLogger(__name__)

INSTANCE_TTL_MS = 10_000
TIMER_BATCH = 200
MNA_GROUP = "workers"
PRUNE_HORIZON_MS = 10 * 60 * 1000


async def instance_heartbeat() -> None:
    await howners.instance_register(instance_id=INSTANCE_ID, ttl_ms=INSTANCE_TTL_MS)


async def timers_run() -> None:
    """Look at every job whose timer is due (ack timeouts, deadlines, lost nodes, re-dispatch)."""
    for job_id in await htimers.timers_claim(now_ms=now_ms(), limit=TIMER_BATCH):
        try:
            await jobs.job_check(job_id=job_id)
        except Exception:
            # The claim's lease brings the timer back; one bad job must not stop the others.
            logger.exception("job %s: timer check failed", job_id)


async def mna_run() -> None:
    events = await hmna.mna_read(group=MNA_GROUP, consumer=INSTANCE_ID, count=100, block_ms=100)
    handled = []
    for event in events:
        try:
            await jobs.job_mna_handle(event=event)
            handled.append(event)
        except Exception:
            logger.exception("MODEL_NOT_AVAILABLE report %s failed", event.entry_id)
    if handled:
        await hmna.mna_ack(group=MNA_GROUP, events=handled)


async def directory_prune() -> None:
    token = INSTANCE_ID
    if not await howners.leader_acquire(duty="directory_prune", token=token, ttl_ms=60_000):
        return
    removed = await hnodes.node_directory_prune(horizon_ms=PRUNE_HORIZON_MS)
    if removed:
        logger.info("pruned %s offline nodes from the directory", removed)


async def history_run() -> None:
    await history_flush()


def process_duties(role: str | None = None) -> list[Duty]:
    """The duties of a process in ``role`` (default: SCHEDULER_ROLE)."""
    role = role or settings.SCHEDULER_ROLE
    local = [
        Duty("instance_heartbeat", 2.0, instance_heartbeat),
        Duty("snapshot_refresh", REFRESH_INTERVAL_S, snapshot_refresh),
        Duty("history", 1.0, history_run),
    ]
    shared = [
        Duty("timers", 0.2, timers_run),
        Duty("mna", 0.05, mna_run),
        Duty("directory_prune", 30.0, directory_prune),
    ]
    # A worker re-dispatches jobs, so it keeps a node snapshot like an instance.
    return local if role == "instance" else [*local, *shared]
