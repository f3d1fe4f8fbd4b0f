from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.errors import SchedulerError
from sessions.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it. The key is the last line of stdout."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("tenant", help="the tenant the key acts for")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            api_key, key = api_key_create(tenant=options["tenant"], name=options["name"])
        except SchedulerError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created an API key for tenant {api_key.tenant}.")
        self.stdout.write("It is shown once; store it now:")
        self.stdout.write(key)
