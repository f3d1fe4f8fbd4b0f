from __future__ import annotations

from django.apps import AppConfig


class HotstateConfig(AppConfig):
    name = "hotstate"
    verbose_name = "Hot state (Redis Cluster)"
