"""Deployment checks of our own, run by ``manage.py check --deploy``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_secret_key_is_not_the_dev_key(app_configs: Any, **kwargs: Any) -> list[Warning]:
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Warning(
                "DJANGO_SECRET_KEY is not set: the public development key is in use.",
                hint="Set DJANGO_SECRET_KEY to a long random value in every shared deployment.",
                id="scheduler.W001",
            )
        ]
    return []
