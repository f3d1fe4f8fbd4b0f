"""The ``mna-storm`` nodes in a process of their own (``scheduler_sdk.simulator.storm``), against
the fake scheduler over real WebSockets."""

from __future__ import annotations

import os
import re

import psutil
import pytest

from scheduler_sdk.simulator import SimulationError
from scheduler_sdk.simulator.storm import StormProcess
from scheduler_sdk.tests.fake_scheduler import NODE_TOKEN, FakeScheduler

pytestmark = pytest.mark.timeout(60)


async def test_the_storm_nodes_report_from_another_process_at_the_asked_rate(
    fake: FakeScheduler,
) -> None:
    storm = StormProcess(fake.node_url, [NODE_TOKEN] * 3, service="storm")
    try:
        assert await storm.start() == 3
        assert len(fake.of_type("node_register")) == 3
        notes = await storm.storm(rate=90, seconds=1.0)
        pid = storm.pid
    finally:
        await storm.stop()
    reports = fake.of_type("model_not_available")
    assert 85 <= len(reports) <= 90, notes
    assert {r.connection for r in reports} == {1, 2, 3}
    assert all(r.frame.service.id == "storm" and r.frame.job_id is None for r in reports)
    sent = re.search(r"3 storm node\(s\) sent (\d+) .* \((\d+)/s\); 0 RATE_LIMITED", notes[0])
    assert sent and int(sent.group(1)) == len(reports), notes
    assert 85 <= int(sent.group(2)) <= 90, notes
    assert pid is not None and f"process {pid}" in notes[0] and storm.pid is None


async def test_a_refused_token_fails_the_start(fake: FakeScheduler) -> None:
    storm = StormProcess(fake.node_url, ["nt_bad"], service="storm", connect_timeout_s=2)
    with pytest.raises(SimulationError, match="could not connect"):
        await storm.start()
    assert storm.pid is None


async def test_the_storm_process_runs_nicer_than_the_simulator(fake: FakeScheduler) -> None:
    storm = StormProcess(fake.node_url, [NODE_TOKEN], service="storm", niceness=7)
    try:
        await storm.start()
        assert storm.pid is not None
        assert psutil.Process(storm.pid).nice() == os.nice(0) + 7
    finally:
        await storm.stop()
