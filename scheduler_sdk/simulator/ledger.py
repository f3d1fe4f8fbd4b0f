"""The books of a run: every submit, reply, dispatch and delivery, and the promises checked on them.

Checked as they happen: a job attempt run on two nodes (``double_dispatch``), a node assigned
more than ``max_jobs`` (``max_jobs``, from the agent's ``Violation``), a result carrying another
request's answer (``wrong_result``), a repeated ``request_id`` answered with another job or
refused (``duplicate_job``, ``duplicate_rejected``), a submit left unanswered (``no_reply``).
Checked at the end (``summary()``): a result delivered twice (``duplicate_result``), never
(``missing_result``), under another request id (``wrong_result``) or to a session that never
had the job (``unexpected_result``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

import protocol as p
from scheduler_sdk.node import Job, Violation
from scheduler_sdk.simulator.config import SimConfig
from scheduler_sdk.simulator.faults import Window, fault_report
from scheduler_sdk.simulator.report import NodeReport, SimViolation, Summary, percentile

logger = logging.getLogger(__name__)

# Rejections that say nothing about idempotency: a repeated request may meet them legitimately.
TRANSIENT_REJECTIONS = frozenset({p.ErrorCode.RATE_LIMITED, p.ErrorCode.DEPENDENCY_DOWN})


@dataclass
class Request:
    """One submit of a request id by one session (a repeat is a ``Request`` of its own)."""

    request_id: str
    session: int
    service: str
    submitted_at: float
    job_id: str | None = None


@dataclass
class _Delivery:
    at: float
    result: p.SessionJobResult


class Ledger:
    """What one run saw, by session index (0-based) and node index; logs under ``run_id``."""

    def __init__(self, config: SimConfig, run_id: str) -> None:
        self._config = config
        self._run_id = run_id
        self._requests: list[Request] = []
        self._first_submit: float | None = None
        self._expected: dict[tuple[int, str], str] = {}  # (session, job_id) -> request_id
        self._deliveries: dict[tuple[int, str], list[_Delivery]] = {}
        self._arrived: dict[tuple[int, str], asyncio.Event] = {}
        self._dispatched: dict[tuple[str, int], int] = {}  # (job_id, attempt) -> node index
        self._rejected: Counter[str] = Counter()
        self._submit_errors: Counter[str] = Counter()
        self._dup_rejected: Counter[str] = Counter()
        self._session_errors: Counter[str] = Counter()
        self._duplicates_submitted = 0
        self._duplicates_same_job = 0
        self._progress_events = 0
        self._violations: list[SimViolation] = []
        self._problems: list[str] = []

    @property
    def violation_count(self) -> int:
        return len(self._violations)

    # --- what sessions send and are answered ------------------------------------------------

    def submitted(self, request: Request) -> None:
        self._requests.append(request)
        if self._first_submit is None:
            self._first_submit = request.submitted_at

    def rejected(self, reply: p.JobRejected) -> None:
        self._rejected[reply.code.value] += 1

    def accepted(self, request: Request, job_id: str) -> None:
        request.job_id = job_id
        self._expected[(request.session, job_id)] = request.request_id

    def submit_failed(self, error: p.Error) -> None:
        self._submit_errors[error.code.value] += 1

    def unanswered(self, request: Request) -> None:
        self.violation(
            "no_reply",
            f"request {request.request_id} (session {request.session + 1}) got neither "
            f"job_accepted nor job_rejected within {self._config.reply_timeout_s} s",
        )

    def repeat_submitted(self) -> None:
        self._duplicates_submitted += 1

    def repeat_answered(
        self, repeat: Request, reply: p.JobAccepted | p.JobRejected, job_id: str
    ) -> str | None:
        """Check the answer to ``repeat`` against ``job_id``, the original's job; the job it was
        accepted as (whose result is then expected too), or None if it was rejected."""
        where = f"request {repeat.request_id} repeated by session {repeat.session + 1}"
        if isinstance(reply, p.JobRejected):
            self._dup_rejected[reply.code.value] += 1
            if reply.code not in TRANSIENT_REJECTIONS:
                self.violation(
                    "duplicate_rejected",
                    f"{where} was rejected with {reply.code.value} although job {job_id} holds it",
                )
            return None
        self._expected[(repeat.session, reply.job_id)] = repeat.request_id
        if reply.job_id == job_id:
            self._duplicates_same_job += 1
        else:
            self.violation("duplicate_job", f"{where} got job {reply.job_id}, not {job_id}")
        return reply.job_id

    async def await_result(self, session: int, job_id: str) -> p.SessionJobResult | None:
        """The first result of ``job_id`` to ``session``; None if none came in time."""
        key = (session, job_id)
        arrived = self._arrived.setdefault(key, asyncio.Event())
        limit = self._config.job_timeout_ms / 1000 + self._config.grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), limit)
        deliveries = self._deliveries.get(key)
        return deliveries[0].result if deliveries else None

    # --- what sessions receive --------------------------------------------------------------

    def on_result(self, session: int, result: p.SessionJobResult) -> None:
        key = (session, result.job_id)
        deliveries = self._deliveries.setdefault(key, [])
        deliveries.append(_Delivery(time.monotonic(), result))
        self._arrived.setdefault(key, asyncio.Event()).set()
        echoed = (result.result or {}).get("request_id")
        # Only this simulator's handlers echo the request id; other nodes' results are skipped.
        if result.ok and echoed is not None and echoed != result.request_id:
            self.violation(
                "wrong_result",
                f"session {session + 1} got, for request {result.request_id} (job "
                f"{result.job_id}), the result of request {echoed}",
            )

    def on_progress(self, progress: p.SessionJobProgress) -> None:
        self._progress_events += 1

    def on_session_error(self, error: p.Error) -> None:
        self._session_errors[error.code.value] += 1

    # --- what nodes are sent ----------------------------------------------------------------

    def dispatched(self, node: int, job: Job) -> None:
        other = self._dispatched.setdefault((job.job_id, job.attempt), node)
        if other != node:
            self.violation(
                "double_dispatch",
                f"job {job.job_id} attempt {job.attempt} ran on node {other + 1} and node "
                f"{node + 1}",
            )

    def overbooked(self, node: int, violation: Violation) -> None:
        self.violation(
            "max_jobs",
            f"node {node + 1} was assigned job {violation.job_id} (attempt "
            f"{violation.attempt}) while it held {violation.held} of max_jobs "
            f"{violation.max_jobs}"
            + (
                f" ({', '.join(f'job {j} attempt {a}' for j, a in violation.holding)})"
                if violation.holding
                else ""
            ),
        )

    # --- findings ---------------------------------------------------------------------------

    def violation(self, kind: str, detail: str) -> None:
        logger.warning("simulation %s: %s: %s", self._run_id, kind, detail)
        self._violations.append(SimViolation(kind, detail))

    def problem(self, text: str, *, once: bool = False) -> None:
        """A peer failed; ``once``: unless the same text is already listed."""
        if not (once and text in self._problems):
            self._problems.append(text)

    def summary(
        self,
        *,
        elapsed_s: float,
        aborted: bool,
        sessions: int,
        submit_rate_cap: float | None,
        fits_slots: bool,
        node_reports: tuple[NodeReport, ...],
        fault: Window | None = None,
    ) -> Summary:
        """Check the deliveries (an aborted run's outstanding jobs are ``unfinished``, not
        missing) and sum everything up."""
        missing, unfinished, duplicate_results = self._check_deliveries(aborted)
        completed = 0
        failed: Counter[str] = Counter()
        latencies: list[float] = []
        ok_times: list[float] = []
        submitted_latencies: list[tuple[float, float]] = []
        last_result: float | None = None
        for request in self._requests:
            if request.job_id is None:
                continue
            delivered = self._deliveries.get((request.session, request.job_id))
            if not delivered:
                continue
            first = delivered[0]
            latencies.append((first.at - request.submitted_at) * 1000)
            submitted_latencies.append((request.submitted_at, latencies[-1]))
            last_result = first.at if last_result is None else max(last_result, first.at)
            if first.result.ok:
                completed += 1
                ok_times.append(first.at)
            else:
                failed[first.result.error.code if first.result.error else "UNKNOWN"] += 1
        span = 0.0
        if self._first_submit is not None and last_result is not None:
            span = last_result - self._first_submit
        results = completed + sum(failed.values())
        return Summary(
            nodes=len(node_reports),
            sessions=sessions,
            elapsed_s=elapsed_s,
            submit_rate_cap=submit_rate_cap,
            submitted=len(self._requests),
            accepted=sum(1 for r in self._requests if r.job_id is not None),
            rejected=dict(self._rejected),
            submit_errors=dict(self._submit_errors),
            duplicates_submitted=self._duplicates_submitted,
            duplicates_same_job=self._duplicates_same_job,
            duplicates_rejected=dict(self._dup_rejected),
            completed=completed,
            failed=dict(failed),
            missing=missing,
            unfinished=unfinished,
            duplicate_results=duplicate_results,
            progress_events=self._progress_events,
            throughput=results / span if span > 0 else 0.0,
            latency_p50_ms=percentile(latencies, 50),
            latency_p95_ms=percentile(latencies, 95),
            latency_p99_ms=percentile(latencies, 99),
            violations=tuple(self._violations),
            notes=tuple(self._notes(fits_slots)),
            problems=tuple(self._problems),
            node_reports=node_reports,
            session_errors=dict(self._session_errors),
            aborted=aborted,
            fault=None
            if fault is None or self._first_submit is None
            else fault_report(
                fault,
                first_submit=self._first_submit,
                ok_results=ok_times,
                submitted_latencies=submitted_latencies,
            ),
        )

    def _check_deliveries(self, aborted: bool) -> tuple[int, int, int]:
        """Exactly one result per accepted job to each session that has it: the counts of
        missing, unfinished (aborted) and duplicated results."""
        missing = unfinished = duplicate_results = 0
        for key, request_id in self._expected.items():
            deliveries = self._deliveries.get(key, [])
            session, job_id = key
            if not deliveries:
                if aborted:
                    unfinished += 1
                    continue
                missing += 1
                self.violation(
                    "missing_result",
                    f"job {job_id} (request {request_id}) was accepted for session "
                    f"{session + 1} but no result came within its timeout plus "
                    f"{self._config.grace_s} s",
                )
            elif len(deliveries) > 1:
                duplicate_results += 1
                self.violation(
                    "duplicate_result",
                    f"job {job_id} (request {request_id}) was delivered "
                    f"{len(deliveries)} times to session {session + 1}",
                )
            wrong = {d.result.request_id for d in deliveries} - {request_id}
            if wrong:
                self.violation(
                    "wrong_result",
                    f"the result of job {job_id} came to session {session + 1} for request "
                    f"{', '.join(sorted(wrong))}, not {request_id}",
                )
        for (session, job_id), deliveries in self._deliveries.items():
            if (session, job_id) not in self._expected:
                self.violation(
                    "unexpected_result",
                    f"session {session + 1} got {len(deliveries)} result(s) for job {job_id}, "
                    "which it was never told it had submitted",
                )
        return missing, unfinished, duplicate_results

    def _notes(self, fits_slots: bool) -> list[str]:
        notes = []
        full = self._rejected.get(p.ErrorCode.NO_AVAILABLE_NODE.value, 0)
        if full and fits_slots and not self._config.mna_rate:
            notes.append(
                f"{full} submit(s) were rejected NO_AVAILABLE_NODE although this run never had "
                "more jobs in flight than its nodes have slots; PROTOCOL.md makes a slot freed "
                "by a result usable by the next submit at once (other load on the scheduler "
                "would also explain it)"
            )
        return notes
