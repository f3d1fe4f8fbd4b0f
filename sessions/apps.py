from __future__ import annotations

from django.apps import AppConfig


class ClientSessionsConfig(AppConfig):
    # The label must not be "sessions": django.contrib.sessions already owns it.
    name = "sessions"
    label = "client_sessions"
    verbose_name = "Client sessions"
