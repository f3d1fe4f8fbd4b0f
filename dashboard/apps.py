from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    label = "scheduler_dashboard"
    verbose_name = "Dashboard"
