from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from core.runtime import runtime_get

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Run the shared background duties (job timers and failover, MODEL_NOT_AVAILABLE reports, "
        "clean-up) without serving sockets, until SIGTERM or SIGINT."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        settings.SCHEDULER_ROLE = "worker"
        asyncio.run(self._run())

    async def _run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runtime = runtime_get()
        logger.info("worker %s running %s", runtime.instance_id, ", ".join(runtime.tasks))
        await stop.wait()
        logger.info("worker %s stopping", runtime.instance_id)
        await runtime.stop()
