"""Every HTTP route: each app's own ``urls`` module, and Django's admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("jobs.urls")),
    path("", include("dashboard.urls")),
    path("admin/", admin.site.urls),
]
