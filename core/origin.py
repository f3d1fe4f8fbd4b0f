"""WebSocket origin check as PROTOCOL.md states it.

Nodes and API clients send no ``Origin`` header and are accepted; a browser always sends one, and
it must name an allowed host. Channels' ``AllowedHostsOriginValidator`` refuses a missing header
unless every host is allowed, which would lock out every non-browser peer, hence this subclass.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import OriginValidator
from django.conf import settings


class PeerOriginValidator(OriginValidator):  # type: ignore[misc]
    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return bool(super().valid_origin(parsed_origin))


def peer_origin_validator(application: Any) -> PeerOriginValidator:
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return PeerOriginValidator(application, allowed_hosts)
