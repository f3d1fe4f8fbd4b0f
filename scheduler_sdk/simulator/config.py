"""What a simulation runs: ``SimConfig``, and the error of a run that could not start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Distribution = Literal["fixed", "uniform", "exponential"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("fixed", "uniform", "exponential")


class SimulationError(Exception):
    """The run could not start: the scheduler is unreachable or refused a credential."""


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``jobs`` and ``duration_s`` both ``None``: run until ``stop()``."""

    services: tuple[str, ...] = ("asr", "nmt", "tts")
    max_jobs: int = 4
    jobs: int | None = 200
    """Total submits over all sessions (repeated request ids not counted)."""
    duration_s: float | None = None
    rate: float = 0.0
    """Submits per second per session; 0 submits as fast as the nodes' slots allow."""
    job_ms: float = 200.0
    """Mean duration of a simulated job."""
    job_ms_distribution: Distribution = "uniform"
    """``fixed``; ``uniform`` between half and 1.5 times the mean; ``exponential`` (capped)."""
    fail_rate: float = 0.0
    mna_rate: float = 0.0
    duplicate_rate: float = 0.0
    progress: bool = True
    """Handlers report progress halfway (one more frame per job)."""
    frame_budget: float = 40.0
    """Frames/s each simulated peer stays under (the scheduler refuses above 50/s); 0: no cap."""
    job_timeout_ms: int = 30_000
    reply_timeout_s: float = 10.0
    grace_s: float = 10.0
    settle_s: float = 0.5
    warmup_s: float = 1.0
    """Pause between the nodes registering and the first submit: every scheduler instance
    learns of a node within 1 s (PROTOCOL.md, ``node_registered``)."""
    connect_timeout_s: float = 10.0
    seed: int | None = None
    fault_at_s: float = 5.0
    """When a fault given to the run begins, in seconds from the first submit."""
    after_fault_s: float = 12.0
    """Submitting goes on at least this long after a fault ends, so recovery can be seen."""
    flap_every_s: float = 0.3
    """With the ``flap-node`` fault: how long node 1 stays registered between two drops."""
    storm_service: str = "storm"
    """With the ``mna-storm`` fault: the service the storm nodes report unavailable."""

    def __post_init__(self) -> None:
        problems = []
        if not self.services or any(not s for s in self.services):
            problems.append("services must be non-empty ids")
        if self.max_jobs < 1:
            problems.append("max_jobs must be at least 1")
        if self.jobs is not None and self.jobs < 0:
            problems.append("jobs must not be negative")
        if self.duration_s is not None and self.duration_s <= 0:
            problems.append("duration_s must be positive")
        for name in (
            "rate",
            "job_ms",
            "frame_budget",
            "grace_s",
            "settle_s",
            "warmup_s",
            "fault_at_s",
            "after_fault_s",
            "flap_every_s",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        for name in ("fail_rate", "mna_rate", "duplicate_rate"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be within 0..1")
        if self.job_ms_distribution not in DISTRIBUTIONS:
            problems.append(f"job_ms_distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if self.job_timeout_ms < 1 or self.reply_timeout_s <= 0 or self.connect_timeout_s <= 0:
            problems.append("timeouts must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def forever(self) -> bool:
        return self.jobs is None and self.duration_s is None
