"""ASGI entry point: Django for HTTP, the consumers for WebSockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

# Django must be set up before anything imports models, so routing comes after this line.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from scheduler_project import daphne_compat  # noqa: E402
from scheduler_project.drain import install_drain_signal  # noqa: E402
from scheduler_project.origin import peer_origin_validator  # noqa: E402
from scheduler_project.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": peer_origin_validator(URLRouter(websocket_urlpatterns)),
    }
)

# Under daphne only: close codes 1009/1012 (see daphne_compat) and SIGUSR1 drains.
daphne_compat.install()
install_drain_signal()
