from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from hotstate.localcluster import run_cli


class Command(BaseCommand):
    help = "Start, stop or inspect the local Redis Cluster (3 primaries + 3 replicas on loopback)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["start", "stop", "status"])
        parser.add_argument("--port", type=int, help="base port (default: REDIS_CLUSTER_PORT)")
        parser.add_argument("--purge", action="store_true", help="with stop: delete its data")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = [options["action"]]
        if options["port"]:
            argv += ["--port", str(options["port"])]
        if options["purge"]:
            argv.append("--purge")
        code = run_cli(argv)
        if code:
            raise CommandError(f"redis_cluster {options['action']} failed (exit {code})")
