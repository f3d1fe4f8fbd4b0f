"""How the simulator judges a run around a fault (``scheduler_sdk.simulator.faults``)."""

from __future__ import annotations

from scheduler_sdk.simulator.faults import Window, fault_report, storm_nodes_for


def steady(start: float, end: float, rate: float) -> list[float]:
    count = int((end - start) * rate)
    return [start + i / rate for i in range(count)]


def test_recovery_is_the_time_after_the_fault_until_the_rate_is_back_to_90_percent() -> None:
    # 40/s for 10 s, nothing during a 5 s fault, 20/s for 3 s after it, then 40/s again.
    results = steady(0, 10, 40) + steady(15, 18, 20) + steady(18, 30, 40)
    report = fault_report(
        Window("freeze-cluster", 10.0, 15.0, ("note",)),
        first_submit=0.0,
        ok_results=results,
        submitted_latencies=[(12.0, 900.0), (3.0, 300.0)],
    )
    assert report.pre_fault_rate == 40.0
    # The first 2 s window holding 72 results starts within a step of 18 s - 1.6 s.
    assert report.recovery_s is not None and 2.0 <= report.recovery_s <= 2.75
    assert (report.started_s, report.ended_s) == (10.0, 15.0)
    assert report.latency_p50_ms == 900.0 and report.results_during == 1


def test_a_rate_that_never_comes_back_has_no_recovery() -> None:
    results = steady(0, 10, 40) + steady(15, 30, 10)
    report = fault_report(
        Window("kill-primary", 10.0, 15.0, ()),
        first_submit=0.0,
        ok_results=results,
        submitted_latencies=[],
    )
    assert report.recovery_s is None
    assert report.latency_p50_ms is None


def test_a_storm_is_spread_so_no_node_passes_the_frame_rate_limit() -> None:
    assert storm_nodes_for(1000) == 25
    assert storm_nodes_for(10) == 1
