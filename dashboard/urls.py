"""Health probes and operator pages."""

from __future__ import annotations

from django.urls import re_path

from dashboard import views

# PROTOCOL.md: HTTP routes answer with or without a trailing slash, never with a redirect.
urlpatterns = [
    re_path(r"^healthz/?$", views.healthz, name="healthz"),
    re_path(r"^readyz/?$", views.readyz, name="readyz"),
    re_path(r"^dashboard/?$", views.dashboard_home, name="dashboard"),
]
