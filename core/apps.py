from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Scheduler core"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the deploy checks)
        from core.runtime import DUTIES, Duty, instance_heartbeat

        DUTIES.register(Duty("instance_heartbeat", 2.0, instance_heartbeat))
