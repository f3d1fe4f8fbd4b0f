"""WebSocket route of the session consumer (PROTOCOL.md: ``/ws/session/``)."""

from __future__ import annotations

from django.urls import re_path

from sessions.consumers import SessionConsumer

websocket_urlpatterns = [re_path(r"^ws/session/?$", SessionConsumer.as_asgi())]
