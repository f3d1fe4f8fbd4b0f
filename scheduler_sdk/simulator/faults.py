"""Faults during a run: when one happens, the simulator's own (a node flapping, a storm of
``model_not_available`` reports), and how the run's throughput came back after it.

The simulator knows nothing of Redis or of the scheduler's processes: a fault it does not run
itself is an ``action`` handed to it (``manage.py simulate --fault`` hands it the faults of
``hotstate.faults``). Either way the run records the fault's window and judges, from the
results, the rate before it, the latency during it and the time until the rate came back.

The storm's sending (``send_storm``) runs in whichever process holds the storm nodes:
``manage.py simulate`` keeps them in a process of their own (``simulator.storm``), so the storm
does not slow down the loop that times the run's jobs; ``mna_storm`` sends from this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import protocol as p
from scheduler_sdk.node import Job, ModelNotAvailable, NodeAgent
from scheduler_sdk.simulator.report import FaultReport, percentile

FLAP_NODE = "flap-node"
MNA_STORM = "mna-storm"
FaultAction = Callable[[], Awaitable[Sequence[str]]]
"""Injects a fault, returns when it is over, with notes on what it did."""

RATE_WINDOW_S = 2.0
"""Throughput is back once a window this long, starting at or after the fault's end, holds."""
RECOVERED_SHARE = 0.9
PRE_FAULT_SKIP_S = 1.0
"""The first second of a run (nodes ramping up) does not count towards the pre-fault rate."""
STEP_S = 0.25
STORM_REPORTS_PER_NODE_S = 40.0
"""A report that names no job is rate limited per connection (PROTOCOL.md v1.1 §3: 50 frames/s);
each storm node stays under that, so a storm of R reports/s needs R/40 nodes."""


@dataclass(frozen=True)
class ScheduledFault:
    name: str
    action: FaultAction


def storm_nodes_for(rate: float) -> int:
    """How many storm nodes send ``rate`` reports/s without one being rate limited."""
    return max(1, math.ceil(rate / STORM_REPORTS_PER_NODE_S))


# --- the simulator's own faults --------------------------------------------------------------


async def flap_node(
    agent: NodeAgent, *, times: int, every_s: float, timeout_s: float = 10.0
) -> list[str]:
    """Drop ``agent``'s connection ``times`` times (as a network failure would, no closing
    handshake), each time once it has registered again and stayed ``every_s``."""
    started = time.monotonic()
    dropped = 0
    for _ in range(times):
        try:
            await agent.wait_registered(timeout_s)
        except TimeoutError:
            break
        await asyncio.sleep(every_s)  # connected this long under load before the next drop
        await agent.drop_connection()
        dropped += 1
    registered = True
    try:
        await agent.wait_registered(timeout_s)
    except TimeoutError:
        registered = False
    return [
        f"dropped node {agent.node_id}'s connection {dropped} of {times} times in "
        f"{time.monotonic() - started:.1f} s; "
        + ("it is registered again" if registered else f"not registered {timeout_s:g} s after")
    ]


def storm_agent(url: str, token: str, *, service: str, options: dict[str, Any]) -> NodeAgent:
    """A node that offers ``service`` and only ever says it cannot serve it."""

    async def unavailable(job: Job) -> dict[str, Any]:
        raise ModelNotAvailable(f"storm: {service} is never available here")

    return NodeAgent(
        url, token, services=[service], max_jobs=1, handlers={service: unavailable}, **options
    )


@dataclass(frozen=True)
class StormResult:
    """What a storm sent: ``sent`` reports from ``nodes`` nodes in ``seconds`` (from the first
    report until the last node was done, or as asked if that was longer), and the
    ``RATE_LIMITED`` errors they got meanwhile (one arriving after the storm is not counted:
    the storm process logs each)."""

    nodes: int
    sent: int
    seconds: float
    rate_limited: int

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def note(self, service: str) -> str:
        return (
            f"{self.nodes} storm node(s) sent {self.sent} model_not_available reports about "
            f"{service} in {self.seconds:.1f} s ({self.rate:.0f}/s); "
            f"{self.rate_limited} RATE_LIMITED errors"
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def mna_storm(
    agents: Sequence[NodeAgent], *, service: str, rate: float, seconds: float
) -> list[str]:
    """Every agent reports ``model_not_available`` about ``service`` (naming no job), together
    ``rate`` reports/s, for ``seconds``; from this process's loop (``simulator.storm`` sends
    them from a process of its own)."""
    if not agents:
        return ["no storm nodes: nothing sent"]
    result = await send_storm(agents, service=service, rate=rate, seconds=seconds)
    return [result.note(service)]


async def send_storm(
    agents: Sequence[NodeAgent], *, service: str, rate: float, seconds: float
) -> StormResult:
    """``mna_storm()``'s sending, counted. The agents' reports are interleaved (agent ``i``
    starts ``i/n`` of an interval late), as independent nodes' would be, not sent in bursts."""
    limited_before = _rate_limited(agents)
    started = time.monotonic()
    end = started + seconds
    count = len(agents)
    interval = count / rate if rate > 0 else math.inf
    sent = await asyncio.gather(
        *(
            _report(agent, service, first=started + interval * i / count, every=interval, end=end)
            for i, agent in enumerate(agents)
        )
    )
    return StormResult(
        nodes=count,
        sent=sum(sent),
        # Not less than asked: the last report goes out an interval before the end.
        seconds=max(time.monotonic() - started, seconds),
        rate_limited=_rate_limited(agents) - limited_before,
    )


def _rate_limited(agents: Sequence[NodeAgent]) -> int:
    return sum(a.stats.errors_received.get(p.ErrorCode.RATE_LIMITED, 0) for a in agents)


async def _report(agent: NodeAgent, service: str, *, first: float, every: float, end: float) -> int:
    """Reports from ``agent`` at ``first``, ``first + every``, ... before ``end``; one that is
    late goes out at once (the node catches up, within its burst allowance)."""
    sent = 0
    while (due := first + sent * every) < end and (now := time.monotonic()) < end:
        if due > now:
            await asyncio.sleep(due - now)
        with contextlib.suppress(Exception):  # a dropped connection: the storm goes on
            await agent.report_model_not_available(service, "storm")
            sent += 1
    return sent


async def no_storm(seconds: float) -> list[str]:
    """``mna-storm`` at 0 reports/s: nothing sent for ``seconds``. The storm test's baseline is
    this, so that it is judged over the same window of the same run as the storm."""
    await asyncio.sleep(seconds)
    return [f"no storm: 0 model_not_available reports in {seconds:g} s (the baseline)"]


# --- judging the run around the fault --------------------------------------------------------


@dataclass(frozen=True)
class Window:
    name: str
    started_at: float
    ended_at: float
    notes: tuple[str, ...]
    failed: str | None = None


def fault_report(
    window: Window,
    *,
    first_submit: float,
    ok_results: Sequence[float],
    submitted_latencies: Sequence[tuple[float, float]],
) -> FaultReport:
    """``window`` judged on the times of the ok results and on (submitted at, latency ms) of
    every result: the rate before the fault, the seconds after its end until a
    ``RATE_WINDOW_S`` window reached ``RECOVERED_SHARE`` of that rate, and the latency of the
    jobs submitted while it lasted."""
    results = sorted(ok_results)
    before_from = first_submit + PRE_FAULT_SKIP_S
    span = window.started_at - before_from
    before = sum(1 for t in results if before_from <= t < window.started_at)
    pre_rate = before / span if span > 0 else 0.0
    recovery = _recovery(results, window.ended_at, pre_rate)
    during = [ms for at, ms in submitted_latencies if window.started_at <= at <= window.ended_at]
    return FaultReport(
        name=window.name,
        started_s=window.started_at - first_submit,
        ended_s=window.ended_at - first_submit,
        notes=window.notes,
        failed=window.failed,
        pre_fault_rate=pre_rate,
        recovery_s=recovery,
        latency_p50_ms=percentile(during, 50),
        latency_p99_ms=percentile(during, 99),
        results_during=len(during),
    )


def _recovery(results: Sequence[float], ended_at: float, pre_rate: float) -> float | None:
    if pre_rate <= 0 or not results:
        return None
    need = RECOVERED_SHARE * pre_rate * RATE_WINDOW_S
    start = ended_at
    while start + RATE_WINDOW_S <= results[-1]:
        count = sum(1 for t in results if start <= t < start + RATE_WINDOW_S)
        if count >= need:
            return start - ended_at
        start += STEP_S
    return None
