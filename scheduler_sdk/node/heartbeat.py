"""The node's heartbeats and the machine load they (and ``node_register``) report."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import psutil
from pydantic import ValidationError

import protocol as p
from scheduler_sdk.node.outbox import Outbox
from scheduler_sdk.node.stats import NodeStats

logger = logging.getLogger(__name__)

HEARTBEAT_JITTER = 0.2

ResourceProbe = Callable[[], p.Resources]


class Load:
    """The load to report: psutil's CPU and memory figures (and ``gpu_pct()`` if given), or
    what ``probe()`` says instead. A failing probe falls back to psutil."""

    def __init__(
        self, probe: ResourceProbe | None, gpu_pct: Callable[[], float | None] | None
    ) -> None:
        self._probe = probe
        self._gpu_pct = gpu_pct
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    def read(self) -> p.Resources:
        if self._probe is not None:
            try:
                return self._probe()
            except Exception:
                logger.exception("resource probe failed; reporting psutil figures")
        return self.read_psutil()

    def read_psutil(self) -> p.Resources:
        gpu = None
        if self._gpu_pct is not None:
            try:
                gpu = self._gpu_pct()
            except Exception:
                logger.exception("GPU probe failed; gpu_pct left out")
        return p.Resources(
            cpu_pct=_percent(psutil.cpu_percent(interval=None)),
            mem_pct=_percent(psutil.virtual_memory().percent),
            gpu_pct=None if gpu is None else _percent(gpu),
        )


class Heartbeats:
    """``node_heartbeat`` every interval ±``HEARTBEAT_JITTER``, with the load and ``held()``."""

    def __init__(
        self,
        *,
        load: Load,
        held: Callable[[], list[str]],
        outbox: Outbox,
        stats: NodeStats,
        rng: random.Random,
    ) -> None:
        self._load = load
        self._held = held
        self._outbox = outbox
        self._stats = stats
        self._rng = rng

    async def run(self, interval_ms: int) -> None:
        """Beat until cancelled (the connection's end)."""
        interval_s = interval_ms / 1000
        if self._held():
            # Back after a gap with jobs still held: renew their reservations at once.
            await self._beat()
        while True:
            await asyncio.sleep(
                interval_s * self._rng.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)
            )
            await self._beat()

    async def _beat(self) -> None:
        try:
            frame = p.NodeHeartbeat(resources=self._load.read(), running=self._held())
        except ValidationError:
            logger.exception("resource probe gave bad figures; reporting psutil figures")
            frame = p.NodeHeartbeat(resources=self._load.read_psutil(), running=self._held())
        if await self._outbox.send(frame, reliable=False):
            self._stats.heartbeats_sent += 1


def _percent(value: float) -> float:
    return min(100.0, max(0.0, float(value)))
