from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from scheduler_project.supervisor import Supervisor


class Command(BaseCommand):
    help = (
        "Run the scheduler on one machine: N daphne instances sharing one listening socket, "
        "worker processes, restarts; SIGTERM drains (peers reconnect elsewhere) before stopping."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--instances", type=int, default=2, help="daphne instances (2)")
        parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
        parser.add_argument("--host", default=settings.HOST, help="listen address (HOST)")
        parser.add_argument("--port", type=int, default=settings.PORT, help="listen port (PORT)")
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=settings.DRAIN_GRACE + 5,
            help="seconds an instance may take to drain before it is terminated",
        )
        parser.add_argument(
            "--demo",
            action="store_true",
            help="also run demo nodes and sessions (manage.py simulate --forever)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["instances"] < 1 or options["workers"] < 0:
            raise CommandError("--instances must be at least 1 and --workers at least 0")
        logging.getLogger("scheduler_project.supervisor").setLevel(logging.INFO)
        supervisor = Supervisor(
            host=options["host"],
            port=options["port"],
            instances=options["instances"],
            workers=options["workers"],
            drain_timeout=options["drain_timeout"],
            on_ready=self._announce,
        )
        if options["demo"]:
            supervisor.demo_argv = [
                sys.executable,
                "manage.py",
                "simulate",
                "--forever",
                "--url",
                supervisor.url,
            ]
        self.options = options
        code = supervisor.run()
        if code:
            raise CommandError(f"serve stopped with {code}")

    def _announce(self, url: str) -> None:
        o = self.options
        self.stdout.write(
            f"\nScheduler ready: {url}/  ({o['instances']} instances, {o['workers']} workers"
            f"{', demo nodes and sessions' if o['demo'] else ''})\n"
            f"  Dashboard:  {url}/dashboard/\n"
            f"  Admin:      {url}/admin/   (create a login: .venv/bin/python manage.py "
            f"createsuperuser)\n"
            f"  Health:     {url}/healthz   {url}/readyz\n"
            f"  WebSockets: {url.replace('http', 'ws')}/ws/node/   "
            f"{url.replace('http', 'ws')}/ws/session/\n"
            "Ctrl-C drains and stops.\n"
        )
        self.stdout.flush()
