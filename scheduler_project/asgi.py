"""ASGI entry point: Django for HTTP, the consumers for WebSockets."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

# Django must be set up before anything imports models, so routing comes after this line.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from core import daphne_compat  # noqa: E402
from core.drain import install_drain_signal  # noqa: E402
from core.origin import peer_origin_validator  # noqa: E402

# Each app's WebSocket routes, named in settings as URLs are (ROOT_URLCONF includes each app's
# urls by name), so the project imports no app.
websocket_urlpatterns = [
    pattern for routes in settings.WEBSOCKET_ROUTES for pattern in import_string(routes)
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": peer_origin_validator(URLRouter(websocket_urlpatterns)),
    }
)

# Under daphne only: close codes 1009/1012 (see daphne_compat) and SIGUSR1 drains.
daphne_compat.install()
install_drain_signal()

# Everything loaded so far lives as long as the process: keep it out of the collector's full
# passes, which otherwise walk it every time (100+ ms pauses of every socket under load).
gc.collect()
gc.freeze()
