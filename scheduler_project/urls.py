from __future__ import annotations

from django.contrib import admin
from django.urls import path, re_path

from dashboard import views as dashboard_views
from jobs import api as jobs_api

urlpatterns = [
    # PROTOCOL.md: HTTP routes answer with or without a trailing slash, never with a redirect.
    re_path(r"^healthz/?$", dashboard_views.healthz, name="healthz"),
    re_path(r"^readyz/?$", dashboard_views.readyz, name="readyz"),
    re_path(r"^api/v1/jobs/?$", jobs_api.jobs_create, name="api-jobs"),
    re_path(r"^api/v1/jobs/(?P<job_id>[^/]+)/?$", jobs_api.jobs_detail, name="api-job"),
    re_path(
        r"^api/v1/jobs/(?P<job_id>[^/]+)/cancel/?$", jobs_api.jobs_cancel, name="api-job-cancel"
    ),
    re_path(r"^dashboard/?$", dashboard_views.dashboard_home, name="dashboard"),
    path("admin/", admin.site.urls),
]
