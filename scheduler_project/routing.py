"""WebSocket routes: each app contributes its own ``routing.py``."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
