from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from jobs.models import JobRecord


@admin.register(JobRecord)
class JobRecordAdmin(admin.ModelAdmin):
    list_display = [
        "job_id",
        "tenant",
        "request_id",
        "service_id",
        "state",
        "attempts",
        "node_id",
        "error_code",
        "created_at",
        "finished_at",
    ]
    list_filter = ["state", "service_id", "tenant"]
    search_fields = ["job_id", "request_id", "node_id"]
    readonly_fields = [f.name for f in JobRecord._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
