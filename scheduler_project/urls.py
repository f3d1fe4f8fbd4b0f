from __future__ import annotations

from django.contrib import admin
from django.urls import path, re_path

from dashboard import views as dashboard_views

urlpatterns = [
    # PROTOCOL.md: HTTP routes answer with or without a trailing slash, never with a redirect.
    re_path(r"^healthz/?$", dashboard_views.healthz, name="healthz"),
    re_path(r"^readyz/?$", dashboard_views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
