"""What a node agent counts, and the broken ``max_jobs`` promises it records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Violation:
    """The scheduler assigned a job while the node already held ``max_jobs`` of them."""

    job_id: str
    attempt: int
    held: int
    max_jobs: int
    holding: tuple[tuple[str, int], ...] = ()  # (job id, attempt) of the jobs it held


@dataclass
class NodeStats:
    """Counters since the agent was made; a simulator reads them to check the scheduler."""

    registrations: int = 0
    jobs_assigned: int = 0
    duplicate_assigns: int = 0
    jobs_started: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    jobs_unavailable: int = 0
    jobs_cancelled: int = 0
    jobs_expired: int = 0
    running: int = 0
    max_running_seen: int = 0
    max_held_seen: int = 0
    heartbeats_sent: int = 0
    progress_sent: int = 0
    progress_dropped: int = 0
    results_resent: int = 0
    errors_received: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    backoff_delays: list[float] = field(default_factory=list)

    @property
    def jobs_finished(self) -> int:
        """Jobs whose handler returned or raised (a result or model_not_available was due)."""
        return self.jobs_succeeded + self.jobs_failed + self.jobs_unavailable
