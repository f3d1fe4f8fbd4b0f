"""The HTTP API's job routes (PROTOCOL.md, HTTP), included under ``/api/v1/``."""

from __future__ import annotations

from django.urls import re_path

from jobs import api

# PROTOCOL.md: HTTP routes answer with or without a trailing slash, never with a redirect.
urlpatterns = [
    re_path(r"^jobs/?$", api.jobs_create, name="api-jobs"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/?$", api.jobs_detail, name="api-job"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/cancel/?$", api.jobs_cancel, name="api-job-cancel"),
]
