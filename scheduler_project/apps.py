from __future__ import annotations

from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    """The project itself as an app, so that ``serve`` and ``worker`` are management commands."""

    name = "scheduler_project"
    label = "scheduler"
    verbose_name = "Scheduler"
