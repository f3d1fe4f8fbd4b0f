"""Issue 9, deliverable 7: nothing is lost when Redis or a process fails (PROTOCOL.md v1.1 §6,
DESIGN.md "Durability and recovery").

Each scenario runs ``manage.py simulate --fault <name>`` (the same command docs/faults.md gives
for a run by hand) against ``manage.py serve --instances 2`` on a Redis Cluster of its own, under
issue 9's load (6 nodes, 6 sessions, 48 jobs/s of ~300 ms), and holds the simulator's books to
the proof: 0 jobs lost silently, 0 results delivered twice, 0 slots oversold, every accepted job
completed or ended with a terminal code its session received, and ok results back to 90 % of
the pre-fault rate within 10 s of the fault's end. The storm scenario holds the latency of the
other service's jobs instead.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chaos.conftest import Served, assert_nothing_lost, assert_recovered, run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(240)]

FAULT_AT = ["--fault-at", "6"]
LATENCY_TOLERANCE = 0.10
STORM_RATE = 1000
STORM_S = 12
WARM_UP_S = 4


def scenario(served: Served, fault: str, *args: str, duration_s: float) -> dict[str, Any]:
    return run_scenario(
        served,
        "--fault", fault, *FAULT_AT, "--seed", "9", *args,
        prefix=f"chaos-{fault}",
        duration_s=duration_s,
        name=fault,
    )  # fmt: skip


def test_kill_9_of_an_instance_under_load(served: Served) -> None:
    summary = scenario(served, "kill-instance", duration_s=20)
    assert_nothing_lost(summary)
    assert_recovered(summary)


def test_kill_9_of_a_redis_primary_and_its_return_as_a_replica(served: Served) -> None:
    summary = scenario(served, "kill-primary", duration_s=20)
    assert_nothing_lost(summary)
    assert_recovered(summary)


def test_client_pause_write_on_each_primary_in_turn(served: Served) -> None:
    summary = scenario(served, "pause-primaries", "--fault-for", "4", duration_s=20)
    assert_nothing_lost(summary)
    assert_recovered(summary)


def test_the_whole_cluster_unreachable_for_10_s(served: Served) -> None:
    summary = scenario(served, "freeze-cluster", "--fault-for", "10", duration_s=20)
    assert_nothing_lost(summary)
    assert_recovered(summary)


def test_a_node_flapping_50_times_under_load(served: Served) -> None:
    summary = scenario(served, "flap-node", "--flaps", "50", duration_s=20)
    assert "dropped node" in "".join(summary["fault"]["notes"]), summary["rendered"]
    assert_nothing_lost(summary)
    assert_recovered(summary)


def test_a_model_not_available_storm_leaves_other_jobs_latency_alone(served: Served) -> None:
    """The design's acceptance test: ≥ 1,000 reports/s about one service, from many nodes,
    while jobs of the other services run; their p50 and p99 stay within 10 % of a run without
    the storm (same load, fixed 300 ms jobs, measured in the same test).

    Both runs are the same command, the baseline at ``--storm-rate 0``: the same submits, and
    the same window judged (the jobs submitted from 1 s to 13 s after the first submit, so
    neither counts the first second). A short run before them warms the freshly started
    instances up, so the baseline is not the only run paying for that. The storm comes from a
    process of its own, so the simulator's loop times the jobs undisturbed."""
    window = [
        "--job-dist", "fixed", "--fault", "mna-storm", "--fault-at", "1",
        "--fault-for", str(STORM_S), "--after-fault", "0",
    ]  # fmt: skip
    # Seeds of their own: a seed fixes the run's request ids, and a repeat would be answered
    # from the first run's job.
    warm_up = run_scenario(
        served, "--job-dist", "fixed", "--seed", "90",
        prefix="chaos-mna", duration_s=WARM_UP_S, name="mna-storm warm-up",
    )  # fmt: skip
    assert_nothing_lost(warm_up)
    baseline = storm_run(served, *window, "--seed", "91", "--storm-rate", "0", name="baseline")
    # Asked a little above the target: a report now and then goes out late.
    rate_asked = str(int(STORM_RATE * 1.05))
    storm = storm_run(served, *window, "--seed", "92", "--storm-rate", rate_asked, name="storm")
    sent = [note for note in storm["fault"]["notes"] if "model_not_available reports" in note]
    rate = re.search(r"\((\d+)/s\)", sent[0] if sent else "")
    assert rate and int(rate.group(1)) >= STORM_RATE, storm["rendered"]
    for figure in ("latency_p50_ms", "latency_p99_ms"):
        base, during = baseline["fault"][figure], storm["fault"][figure]
        assert during is not None and base is not None, storm["rendered"]
        assert during <= base * (1 + LATENCY_TOLERANCE), (
            f"{figure}: {during:.0f} ms during the storm, {base:.0f} ms without it\n"
            f"{baseline['rendered']}\n{storm['rendered']}"
        )


def storm_run(served: Served, *args: str, name: str) -> dict[str, Any]:
    summary = run_scenario(
        served, *args, prefix="chaos-mna", duration_s=STORM_S, name=f"mna-storm {name}"
    )
    assert_nothing_lost(summary)
    assert summary["fault"]["failed"] is None, summary["rendered"]
    return summary
