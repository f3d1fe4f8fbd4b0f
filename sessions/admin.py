from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from sessions.models import ApiKey, ClientSession
from sessions.services import api_key_issue

SHOWN_ONCE = "Copy it now: it is shown once and stored only as a hash."


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["tenant", "name", "key_prefix", "active", "created_at", "last_used_at"]
    list_filter = ["active"]
    search_fields = ["tenant", "name", "key_prefix"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]
    actions = ["issue_new_key"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key = api_key_issue(api_key=obj)
        self.message_user(
            request, f"API key for tenant {obj.tenant}: {key}  {SHOWN_ONCE}", messages.WARNING
        )

    @admin.action(description="Issue a new key (the old one stops working)")
    def issue_new_key(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            key = api_key_issue(api_key=api_key)
            self.message_user(
                request, f"New API key for {api_key.tenant}: {key}  {SHOWN_ONCE}", messages.WARNING
            )


@admin.register(ClientSession)
class ClientSessionAdmin(admin.ModelAdmin):
    list_display = ["session_id", "tenant", "instance_id", "created_at", "closed_at", "resumes"]
    search_fields = ["session_id", "tenant"]
    list_filter = ["tenant"]
    readonly_fields = [f.name for f in ClientSession._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
