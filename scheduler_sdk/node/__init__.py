"""Connect a worker machine to the scheduler as a node and run the jobs it is sent.

The agent keeps one WebSocket to ``/ws/node/`` and speaks PROTOCOL.md "Node ⇄ scheduler":

1. Connect, send ``node_register``, wait for ``node_registered`` (its ``heartbeat_interval_ms``
   sets the heartbeat period), then send what was waiting from an earlier connection.
2. Heartbeat every interval ±20 % with CPU and memory load and the ids of every job it holds.
3. For each ``job_assign``: ``job_ack`` at once; ``job_started`` when a slot is free and the
   handler starts; then ``job_result`` or ``model_not_available``. At most ``max_jobs`` handlers
   run at once; an assignment beyond that (which the scheduler promises never to send) is
   queued, acked, and recorded as a ``Violation``.
4. ``job_cancel`` cancels the handler and nothing more is sent about that job.
5. Close 4401 (bad token) and 4409 (replaced) stop the agent with ``Unauthorized`` / ``Replaced``.
   Any other drop, including 1012 (instance stopping), reconnects with capped exponential
   backoff and jitter, and registers again. Handlers keep running across the gap; their
   ``job_result`` waits and is sent on the next connection.

``agent`` holds ``NodeAgent`` (life cycle, one connection); ``jobs`` the job table (fencing by
attempt, slots, deadlines); ``outcome`` what a handler's end becomes; ``outbox`` the outgoing
frames (queued while disconnected, resent and paced after a reconnect); ``heartbeat`` the
heartbeats and the load they report; ``job`` what a handler sees and raises; ``stats`` the
counters.
"""

from __future__ import annotations

from scheduler_sdk.node.agent import NodeAgent
from scheduler_sdk.node.job import Handler, Job, JobFailed, ModelNotAvailable
from scheduler_sdk.node.stats import NodeStats, Violation

__all__ = [
    "Handler",
    "Job",
    "JobFailed",
    "ModelNotAvailable",
    "NodeAgent",
    "NodeStats",
    "Violation",
]
