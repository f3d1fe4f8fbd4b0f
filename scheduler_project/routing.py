"""WebSocket routes (PROTOCOL.md: ``/ws/node/`` and ``/ws/session/``)."""

from __future__ import annotations

from django.urls import re_path

from nodes.consumers import NodeConsumer
from sessions.consumers import SessionConsumer

websocket_urlpatterns = [
    re_path(r"^ws/node/?$", NodeConsumer.as_asgi()),
    re_path(r"^ws/session/?$", SessionConsumer.as_asgi()),
]
