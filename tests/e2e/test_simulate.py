"""``manage.py simulate`` against the system ``scripts/run.sh`` starts: one daphne with the
default settings. The simulator checks the scheduler's promises itself (max_jobs on every node,
one dispatch per attempt, every result exactly once, repeats answered with the same job) and
exits non-zero on any violation; this test holds it to zero."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.e2e.harness.deployment import System
from tests.e2e.harness.processes import ROOT

pytestmark = pytest.mark.e2e

JOBS = 60
SIMULATE_TIMEOUT_S = 90


def summary_figure(summary: str, label: str) -> int:
    match = re.search(rf"^\s+{label}\s+(\d+)", summary, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{summary}"
    return int(match.group(1))


def test_simulate_against_a_real_scheduler_sees_no_violation(e2e_system: System) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "simulate",
            "--url",
            e2e_system.url,
            "--jobs",
            str(JOBS),
            "--nodes",
            "3",
            "--sessions",
            "2",
            "--job-ms",
            "50",
            # Some repeated request ids and failing handlers, so idempotency and failed results
            # are checked too; a seed makes a failure reproducible.
            "--duplicate-rate",
            "0.2",
            "--fail-rate",
            "0.05",
            "--seed",
            "20",
            "--job-timeout-ms",
            "15000",
            "--grace",
            "5",
            "--quiet",
        ],
        cwd=ROOT,
        env=e2e_system.env,  # the scheduler's own database: the simulator makes its credentials
        capture_output=True,
        text=True,
        timeout=SIMULATE_TIMEOUT_S,
        check=False,
    )
    summary = done.stdout
    assert done.returncode == 0, f"simulate failed:\n{summary}\n{done.stderr}"
    assert "No invariant violations seen." in summary, summary
    assert "VIOLATIONS" not in summary and "PROBLEM" not in summary, summary
    assert summary_figure(summary, "submitted") == JOBS
    accepted = summary_figure(summary, "accepted")
    assert accepted > 0, summary
    assert summary_figure(summary, "completed") + summary_figure(summary, "failed") == accepted
    assert summary_figure(summary, "missing") == 0
    assert summary_figure(summary, "duplicated") == 0
    repeats = re.search(r"repeats\s+(\d+) request id\(s\) submitted again: (\d+) answered", summary)
    assert repeats and repeats.group(1) == repeats.group(2), summary
