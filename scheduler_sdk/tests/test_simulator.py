"""The simulator against ``SchedulingFake``, a scheduler that schedules for real, in memory.

The fake keeps the promises of PROTOCOL.md unless told to break one; each check of the
simulator is shown to catch its broken promise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scheduler_sdk.simulator import (
    SIM_FAILED,
    SimConfig,
    SimulationError,
    Simulator,
    Summary,
    percentile,
)
from scheduler_sdk.tests.conftest import FAST_BACKOFF
from scheduler_sdk.tests.fake_scheduler import FakeScheduler, running
from scheduler_sdk.tests.scheduling_fake import SchedulingFake


@contextlib.asynccontextmanager
async def scheduling(**options: Any) -> AsyncIterator[SchedulingFake]:
    async with running(SchedulingFake(**options)) as fake:
        yield fake


def fast(**fields: Any) -> SimConfig:
    """Test-speed settings: short jobs, no warm-up, short grace."""
    defaults: dict[str, Any] = {
        "services": ("asr", "nmt"),
        "max_jobs": 2,
        "jobs": 12,
        "job_ms": 20.0,
        "warmup_s": 0.0,
        "grace_s": 0.3,
        "settle_s": 0.2,
        "job_timeout_ms": 1_000,
        "connect_timeout_s": 3.0,
        "seed": 7,
    }
    return SimConfig(**{**defaults, **fields})


async def simulate(fake: FakeScheduler, config: SimConfig, nodes: int = 2) -> Summary:
    simulator = Simulator(
        fake.url,
        [f"nt_{i}" for i in range(nodes)],
        ["sk_sim", "sk_sim"],
        config,
        agent_options={"backoff": FAST_BACKOFF},
        client_options={"backoff": FAST_BACKOFF},
    )
    return await asyncio.wait_for(simulator.run(), 20)


# --- a correct scheduler --------------------------------------------------------------------


async def test_a_clean_run_accounts_for_every_job_and_sees_no_violation() -> None:
    config = fast(jobs=40, fail_rate=0.2, mna_rate=0.1, duplicate_rate=0.3)
    async with scheduling() as fake:
        summary = await simulate(fake, config, nodes=3)

    assert summary.violations == () and summary.problems == () and summary.ok
    assert summary.submitted == 40
    assert summary.accepted + summary.rejected_total == 40
    assert summary.accepted == len(fake.jobs)
    assert summary.completed + summary.failed_total == summary.accepted
    assert summary.failed.get(SIM_FAILED, 0) > 0  # the fail rate reached the sessions
    assert sum(n.unavailable for n in summary.node_reports) > 0  # and the MNA rate the nodes
    assert summary.duplicates_submitted > 0
    assert summary.duplicates_same_job == summary.duplicates_submitted
    assert summary.missing == summary.duplicate_results == 0
    assert summary.notes == ()  # the MNA rate explains rejections, if any
    assert summary.progress_events > 0
    assert summary.throughput > 0
    assert summary.latency_p50_ms is not None and summary.latency_p99_ms is not None
    assert 10 <= summary.latency_p50_ms <= summary.latency_p99_ms
    assert all(n.max_held_seen <= n.max_jobs == 2 for n in summary.node_reports)

    text = summary.render()
    assert "submitted   40" in text
    assert f"completed   {summary.completed}" in text
    assert "latency     submit to result (all results): p50 " in text
    assert "No invariant violations seen." in text


async def test_submits_keep_within_the_slots_of_the_nodes_when_unpaced() -> None:
    # rate 0: each session keeps at most its share of the 2 x 2 slots in flight, so the
    # scheduler never has to reject for want of a node.
    async with scheduling() as fake:
        summary = await simulate(fake, fast(jobs=30, frame_budget=0), nodes=2)
    assert summary.ok, summary.render()
    assert (summary.accepted, summary.rejected_total, summary.completed) == (30, 0, 30)
    assert summary.notes == ()
    assert summary.submit_rate_cap is None
    assert max(n.max_held_seen for n in summary.node_reports) == 2


async def test_a_rejection_with_free_slots_is_noted_but_breaks_no_promise() -> None:
    async with scheduling(misbehave=frozenset({"refuse_first"})) as fake:
        summary = await simulate(fake, fast(jobs=6), nodes=2)
    assert summary.ok
    assert summary.rejected == {"NO_AVAILABLE_NODE": 1}
    [note] = summary.notes
    assert note.startswith("1 submit(s) were rejected NO_AVAILABLE_NODE although this run")
    assert f"NOTE: {note}" in summary.render()


async def test_a_duration_run_is_paced_at_the_asked_rate() -> None:
    async with scheduling() as fake:
        summary = await simulate(fake, fast(jobs=None, duration_s=1.0, rate=10), nodes=2)
    assert summary.ok, summary.render()
    assert summary.submit_rate_cap == 10
    # Two sessions at 10/s for 1 s: 20 submits, give or take the first and the last.
    assert 16 <= summary.submitted <= 22


async def test_the_rate_is_capped_by_the_frame_budget_of_the_nodes() -> None:
    # Each node sends 4 frames per job (ack, started, progress, result): 2 nodes under 40
    # frames/s take 20 jobs/s, 10/s for each of the 2 sessions.
    simulator = Simulator("ws://127.0.0.1:1", ["nt_0", "nt_1"], ["sk", "sk"], fast(rate=100))
    assert simulator.submit_rate_cap == 10


async def test_stop_ends_a_run_forever_and_waits_for_its_jobs() -> None:
    async with scheduling() as fake:
        simulator = Simulator(
            fake.url, ["nt_0"], ["sk_a"], fast(jobs=None, job_ms=100), agent_options={}
        )
        running_sim = asyncio.create_task(simulator.run())
        await fake.wait_for(lambda: simulator.live.results >= 3, what="3 results")
        assert "results " in simulator.progress_line()
        simulator.stop()
        summary = await asyncio.wait_for(running_sim, 10)
    assert summary.ok, summary.render()
    assert summary.completed == summary.accepted >= 3
    assert summary.missing == summary.unfinished == 0


async def test_a_refused_credential_stops_the_run_before_it_starts() -> None:
    async with scheduling() as fake:
        simulator = Simulator(fake.url, ["bad-token"], ["sk_a"], fast())
        with pytest.raises(SimulationError, match="1 of 2 simulated peers could not connect"):
            await simulator.run()
        assert fake.jobs == {}


async def test_an_unreachable_scheduler_is_reported() -> None:
    simulator = Simulator("ws://127.0.0.1:9", [], ["sk_a"], fast(connect_timeout_s=0.5))
    with pytest.raises(SimulationError, match="no answer from the scheduler"):
        await simulator.run()


# --- a scheduler that breaks its promises ---------------------------------------------------


@pytest.mark.parametrize(
    ("misbehaviour", "kind", "detail"),
    [
        ("duplicate_result", "duplicate_result", "was delivered 2 times to session"),
        ("drop_result", "missing_result", "was accepted for session"),
        ("overbook", "max_jobs", "of max_jobs 2"),
        ("rebind_request", "duplicate_job", "got job j"),
        ("double_dispatch", "double_dispatch", "job j1 attempt 1 ran on node"),
    ],
)
async def test_a_broken_promise_is_reported_as_a_violation(
    misbehaviour: str, kind: str, detail: str
) -> None:
    duplicates = 1.0 if misbehaviour == "rebind_request" else 0.0
    # Unpaced, so that each session has both of its slots in flight at once.
    config = fast(jobs=8, duplicate_rate=duplicates, frame_budget=0)
    async with scheduling(misbehave=frozenset({misbehaviour})) as fake:
        summary = await simulate(fake, config, nodes=2)

    assert not summary.ok
    kinds = {v.kind for v in summary.violations}
    assert kind in kinds, summary.render()
    assert any(detail in v.detail for v in summary.violations if v.kind == kind)
    text = summary.render()
    assert f"VIOLATIONS: {len(summary.violations)}" in text
    assert f"  {kind}: " in text
    if kind == "duplicate_result":
        assert summary.duplicate_results == 1 and kinds == {kind}
    if kind == "missing_result":
        assert summary.missing == 1 and kinds == {kind}


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"fail_rate must be within 0\.\.1"):
        SimConfig(fail_rate=1.5)
    with pytest.raises(ValueError, match="max_jobs must be at least 1"):
        SimConfig(max_jobs=0)
    assert SimConfig(jobs=None).forever
