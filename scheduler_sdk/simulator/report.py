"""What a run saw: the ``Summary``, its per-node ``NodeReport``s and the ``SimViolation``s."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_RENDERED_VIOLATIONS = 20


@dataclass(frozen=True)
class SimViolation:
    """A promise of PROTOCOL.md or DESIGN.md that the scheduler was seen to break."""

    kind: str
    """``max_jobs``, ``double_dispatch``, ``duplicate_result``, ``missing_result``,
    ``unexpected_result``, ``wrong_result``, ``duplicate_job``, ``duplicate_rejected``,
    ``no_reply``."""
    detail: str


@dataclass(frozen=True)
class FaultReport:
    """A fault during the run and how the run came through it (``simulator.faults``); times
    are seconds from the first submit."""

    name: str
    started_s: float
    ended_s: float
    notes: tuple[str, ...]
    failed: str | None
    """Why the fault could not be injected (or the system did not come back from it)."""
    pre_fault_rate: float
    """Ok results per second before the fault."""
    recovery_s: float | None
    """Seconds from the fault's end until ok results reached 90 % of ``pre_fault_rate`` over a
    2 s window (``None``: not within the run)."""
    latency_p50_ms: float | None
    """Submit-to-result latency of the jobs submitted while the fault lasted."""
    latency_p99_ms: float | None
    results_during: int


@dataclass(frozen=True)
class NodeReport:
    name: str
    node_id: str | None
    max_jobs: int
    jobs_started: int
    succeeded: int
    failed: int
    unavailable: int
    cancelled: int
    max_held_seen: int
    registrations: int
    errors_received: Mapping[str, int]


@dataclass(frozen=True)
class Summary:
    """What a run saw. ``ok`` is false when any violation or peer failure was seen."""

    nodes: int
    sessions: int
    elapsed_s: float
    submit_rate_cap: float | None
    """Per-session submits/s the run was paced at (``None``: unpaced)."""
    submitted: int
    accepted: int
    rejected: Mapping[str, int]
    submit_errors: Mapping[str, int]
    duplicates_submitted: int
    duplicates_same_job: int
    duplicates_rejected: Mapping[str, int]
    completed: int
    failed: Mapping[str, int]
    missing: int
    unfinished: int
    """Accepted jobs still outstanding when the run was aborted (not counted as missing)."""
    duplicate_results: int
    progress_events: int
    throughput: float
    """Results per second, from the first submit to the last result."""
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    violations: tuple[SimViolation, ...]
    notes: tuple[str, ...]
    """Oddities that break no promise by themselves but may point at one."""
    problems: tuple[str, ...]
    """Peers that failed (a node replaced, a session closed): not the scheduler's promises,
    but the run's figures are incomplete."""
    node_reports: tuple[NodeReport, ...]
    session_errors: Mapping[str, int]
    aborted: bool
    fault: FaultReport | None = None

    @property
    def oversold(self) -> int:
        """Broken slot promises: a node sent more than ``max_jobs``, an attempt run twice."""
        return sum(1 for v in self.violations if v.kind in ("max_jobs", "double_dispatch"))

    def as_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready values (``manage.py simulate --json``)."""
        return {**dataclasses.asdict(self), "ok": self.ok, "oversold": self.oversold}

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def ok(self) -> bool:
        return not self.violations and not self.problems

    def render(self) -> str:
        """The summary as text for a terminal."""
        lines = [
            f"Simulated {self.nodes} node(s) and {self.sessions} session(s) for "
            f"{self.elapsed_s:.1f} s" + (" (aborted)" if self.aborted else "") + ".",
            f"  submitted   {self.submitted}"
            + (
                f" (paced at {self.submit_rate_cap:.1f}/s per session)"
                if self.submit_rate_cap
                else ""
            ),
            f"  accepted    {self.accepted}",
            f"  rejected    {self.rejected_total}{_codes(self.rejected)}",
        ]
        if self.submit_errors:
            lines.append(
                f"  errors      {sum(self.submit_errors.values())}{_codes(self.submit_errors)}"
            )
        lines += [
            f"  completed   {self.completed}",
            f"  failed      {self.failed_total}{_codes(self.failed)}",
            f"  missing     {self.missing}",
            f"  duplicated  {self.duplicate_results} result(s) delivered more than once",
        ]
        if self.unfinished:
            lines.append(f"  unfinished  {self.unfinished} (still running when aborted)")
        lines.append(
            f"  repeats     {self.duplicates_submitted} request id(s) submitted again: "
            f"{self.duplicates_same_job} answered with the same job, "
            f"{sum(self.duplicates_rejected.values())} rejected{_codes(self.duplicates_rejected)}"
        )
        lines.append(f"  throughput  {self.throughput:.1f} results/s")
        lines.append(
            "  latency     submit to result (all results): "
            f"p50 {_ms(self.latency_p50_ms)}  p95 {_ms(self.latency_p95_ms)}  "
            f"p99 {_ms(self.latency_p99_ms)}"
        )
        if self.session_errors:
            lines.append(f"  session error frames{_codes(self.session_errors)}")
        if self.fault is not None:
            lines += _fault_lines(self.fault)
        if self.node_reports:
            lines.append("  nodes:")
            for node in self.node_reports:
                errors = _codes(node.errors_received)
                lines.append(
                    f"    {node.name} ({node.node_id or 'never registered'}): "
                    f"ran {node.jobs_started}, ok {node.succeeded}, failed {node.failed}, "
                    f"unavailable {node.unavailable}, cancelled {node.cancelled}; "
                    f"max held {node.max_held_seen}/{node.max_jobs}"
                    + (f"; reconnected {node.registrations - 1}" if node.registrations > 1 else "")
                    + (f"; error frames{errors}" if errors else "")
                )
        for note in self.notes:
            lines.append(f"NOTE: {note}")
        for problem in self.problems:
            lines.append(f"PROBLEM: {problem}")
        if self.violations:
            lines.append(f"VIOLATIONS: {len(self.violations)}")
            for violation in self.violations[:MAX_RENDERED_VIOLATIONS]:
                lines.append(f"  {violation.kind}: {violation.detail}")
            if len(self.violations) > MAX_RENDERED_VIOLATIONS:
                lines.append(f"  ... and {len(self.violations) - MAX_RENDERED_VIOLATIONS} more")
        else:
            lines.append("No invariant violations seen.")
        return "\n".join(lines)


def _fault_lines(fault: FaultReport) -> list[str]:
    recovery = "not seen" if fault.recovery_s is None else f"{fault.recovery_s:.1f} s"
    lines = [
        f"  fault       {fault.name} from {fault.started_s:.1f} s to {fault.ended_s:.1f} s"
        + (f" (FAILED: {fault.failed})" if fault.failed else ""),
        f"    before    {fault.pre_fault_rate:.1f} ok results/s; back to 90 % after {recovery}",
        f"    during    {fault.results_during} results of jobs submitted meanwhile: "
        f"p50 {_ms(fault.latency_p50_ms)}  p99 {_ms(fault.latency_p99_ms)}",
    ]
    lines += [f"    {note}" for note in fault.notes]
    return lines


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q ≤ 100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _codes(counts: Mapping[str, int]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) + ")"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
