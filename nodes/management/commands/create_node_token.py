from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.errors import SchedulerError
from nodes.services import node_create


class Command(BaseCommand):
    help = "Create a node record and print its token. The token is the last line of stdout."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="a unique, human-readable node name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            node, token = node_create(name=options["name"])
        except SchedulerError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created node {node.name} with node_id {node.node_id}.")
        self.stdout.write("Its token is shown once; store it now:")
        self.stdout.write(token)
