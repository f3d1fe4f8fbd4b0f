"""``Simulator``: one run, from connecting every peer to the ``Summary``.

It owns the phases (connect, warm up, submit, drain, settle, disconnect) and the peers; the
traffic (``traffic``), the simulated nodes (``nodes``) and the books with their checks
(``ledger``) are its collaborators.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler_sdk.session import SessionClient
from scheduler_sdk.simulator import faults
from scheduler_sdk.simulator.config import SimConfig, SimulationError
from scheduler_sdk.simulator.ledger import Ledger
from scheduler_sdk.simulator.nodes import node_report, simulated_agent
from scheduler_sdk.simulator.report import Summary
from scheduler_sdk.simulator.traffic import Traffic

logger = logging.getLogger(__name__)


class Simulator:
    """One run: ``len(node_tokens)`` simulated nodes and ``len(api_keys)`` sessions.

    ``url`` is the scheduler's base (``ws://host:port``); the node and session endpoints are
    ``/ws/node/`` and ``/ws/session/`` below it. ``agent_options`` and ``client_options`` go to
    every ``NodeAgent`` and ``SessionClient`` (a test passes a fast backoff through them).

    A ``fault`` runs ``config.fault_at_s`` after the first submit, and the ``Summary`` judges
    the run around it (``simulator.faults``); ``storm_tokens`` are the nodes of an
    ``mna_storm()`` (they connect with the others and take no jobs of the run's services).
    """

    def __init__(
        self,
        url: str,
        node_tokens: Sequence[str],
        api_keys: Sequence[str],
        config: SimConfig | None = None,
        *,
        agent_options: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
        storm_tokens: Sequence[str] = (),
        fault: faults.ScheduledFault | None = None,
    ) -> None:
        if not api_keys:
            raise ValueError("a simulation needs at least one session (API key)")
        self.config = config or SimConfig()
        base = url.rstrip("/")
        self.url = base
        self.node_url = f"{base}/ws/node/"
        self.session_url = f"{base}/ws/session/"
        seed = self.config.seed
        self._run_id = uuid.UUID(int=random.Random(seed).getrandbits(128)).hex[:8]
        self._ledger = Ledger(self.config, self._run_id)
        ledger = self._ledger

        self._agents = [
            simulated_agent(
                i,
                self.node_url,
                token,
                config=self.config,
                ledger=ledger,
                options=dict(agent_options or {}),
            )
            for i, token in enumerate(node_tokens)
        ]
        self._clients = [
            SessionClient(
                self.session_url,
                key,
                on_result=functools.partial(ledger.on_result, i),
                on_progress=ledger.on_progress,
                on_error=ledger.on_session_error,
                rng=random.Random(None if seed is None else f"{seed}-session-{i}"),
                **dict(client_options or {}),
            )
            for i, key in enumerate(api_keys)
        ]
        self._storm_agents = [
            faults.storm_agent(
                self.node_url,
                token,
                service=self.config.storm_service,
                options=dict(agent_options or {}),
            )
            for token in storm_tokens
        ]
        self.fault = fault
        self._fault_window: faults.Window | None = None
        self._traffic = Traffic(
            self.config, self._clients, ledger, nodes=len(self._agents), run_id=self._run_id
        )
        self.live = self._traffic.live
        self.submit_rate_cap = self._traffic.rate_cap
        self._aborting = asyncio.Event()
        self._started_at: float | None = None
        self._last_line: tuple[float, int] = (0.0, 0)

    # --- control ----------------------------------------------------------------------------

    def stop(self, *, abort: bool = False) -> None:
        """End submitting; with ``abort``, stop waiting for outstanding jobs too."""
        self._traffic.stop()
        if abort:
            self._aborting.set()
            self._traffic.cancel()

    def progress_line(self) -> str:
        """One line on the run so far; the rate is over the time since the previous line."""
        now = time.monotonic()
        live = self.live
        elapsed = now - self._started_at if self._started_at else 0.0
        since, results_then = self._last_line
        rate = (live.results - results_then) / (now - since) if since and now > since else 0.0
        self._last_line = (now, live.results)
        return (
            f"[{elapsed:6.1f}s] submitted {live.submitted}  accepted {live.accepted}  "
            f"rejected {live.rejected}  results {live.results} (ok {live.ok})  "
            f"in flight {live.in_flight}  {rate:.1f} results/s  "
            f"violations {self._ledger.violation_count}"
        )

    # --- the simulator's own faults ----------------------------------------------------------

    async def flap_node(self, *, times: int) -> list[str]:
        """The ``flap-node`` fault: node 1's connection dropped ``times`` times."""
        if not self._agents:
            return ["no nodes: nothing to flap"]
        return await faults.flap_node(
            self._agents[0], times=times, every_s=self.config.flap_every_s
        )

    async def mna_storm(self, *, rate: float, seconds: float) -> list[str]:
        """The ``mna-storm`` fault: the storm nodes report ``rate`` model_not_available/s."""
        return await faults.mna_storm(
            self._storm_agents,
            service=self.config.storm_service,
            rate=rate,
            seconds=seconds,
        )

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> Summary:
        """Connect, submit, wait for the results, disconnect; the ``Summary``."""
        self._started_at = time.monotonic()
        self._last_line = (self._started_at, 0)
        try:
            await self._connect()
            if self.config.warmup_s and self._agents:
                await asyncio.sleep(self.config.warmup_s)
            fault = None if self.fault is None else asyncio.create_task(self._fault(self.fault))
            try:
                await self._traffic.submit()
                if fault is not None:
                    await fault
            finally:
                if fault is not None:
                    fault.cancel()
            await self._drain_phase()
        finally:
            await self._disconnect()
        aborted = self._aborting.is_set()
        return self._ledger.summary(
            elapsed_s=time.monotonic() - self._started_at,
            aborted=aborted,
            sessions=len(self._clients),
            submit_rate_cap=self.submit_rate_cap,
            fits_slots=self._traffic.fits_slots,
            node_reports=tuple(node_report(i, a) for i, a in enumerate(self._agents)),
            fault=self._fault_window,
        )

    async def _fault(self, fault: faults.ScheduledFault) -> None:
        """Run ``fault`` at ``fault_at_s``, keeping the submits going until it is over and
        ``after_fault_s`` more."""
        self._traffic.not_before = float("inf")
        await asyncio.sleep(self.config.fault_at_s)
        started = time.monotonic()
        logger.warning("simulation %s: fault %s begins", self._run_id, fault.name)
        notes: Sequence[str] = ()
        failed = None
        try:
            notes = await fault.action()
        except Exception as exc:
            failed = str(exc) or repr(exc)
            logger.exception("simulation %s: fault %s failed", self._run_id, fault.name)
        ended = time.monotonic()
        logger.warning("simulation %s: fault %s is over", self._run_id, fault.name)
        self._fault_window = faults.Window(fault.name, started, ended, tuple(notes), failed)
        self._traffic.not_before = ended + self.config.after_fault_s

    async def _connect(self) -> None:
        timeout = self.config.connect_timeout_s
        starts = [agent.start(timeout_s=timeout) for agent in self._agents + self._storm_agents]
        connects = [client.connect(timeout_s=timeout) for client in self._clients]
        outcomes = await asyncio.gather(*starts, *connects, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            first = failures[0]
            if isinstance(first, TimeoutError):
                reason = f"no answer from the scheduler at {self.url} within {timeout} s"
            else:
                reason = str(first) or repr(first)
            raise SimulationError(
                f"{len(failures)} of {len(outcomes)} simulated peers could not connect: {reason}"
            )
        logger.info(
            "simulation %s: %d node(s) and %d session(s) connected",
            self._run_id,
            len(self._agents),
            len(self._clients),
        )

    async def _drain_phase(self) -> None:
        while (outstanding := self._traffic.outstanding) and not self._aborting.is_set():
            await asyncio.wait(outstanding)
        if not self._aborting.is_set() and self.config.settle_s:
            aborted = asyncio.create_task(self._aborting.wait())
            await asyncio.wait({aborted}, timeout=self.config.settle_s)
            aborted.cancel()

    async def _disconnect(self) -> None:
        await self._traffic.close()
        await asyncio.gather(*(client.close() for client in self._clients), return_exceptions=True)
        grace = 0.0 if self._aborting.is_set() else 2.0
        await asyncio.gather(
            *(agent.stop(grace_s=grace) for agent in self._agents + self._storm_agents),
            return_exceptions=True,
        )
        for i, agent in enumerate(self._agents):
            if agent.error is not None:
                self._ledger.problem(f"node {i + 1} stopped: {agent.error}")
