from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from nodes.models import Node
from nodes.services import node_drained_set, node_token_issue

SHOWN_ONCE = "Copy it now: it is shown once and stored only as a hash."


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "node_id", "token_prefix", "enabled", "drained", "last_seen_at"]
    list_filter = ["enabled", "drained"]
    search_fields = ["name", "node_id"]
    readonly_fields = [
        "node_id",
        "token_prefix",
        "declared_capabilities",
        "created_at",
        "last_seen_at",
    ]
    actions = ["issue_new_token", "drain", "undrain"]

    def save_model(self, request: HttpRequest, obj: Node, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token = node_token_issue(node=obj)
        self.message_user(
            request, f"Token for node {obj.name}: {token}  {SHOWN_ONCE}", messages.WARNING
        )

    @admin.action(description="Issue a new token (the old one stops working)")
    def issue_new_token(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            token = node_token_issue(node=node)
            self.message_user(
                request, f"New token for node {node.name}: {token}  {SHOWN_ONCE}", messages.WARNING
            )

    @admin.action(description="Drain: send no new jobs")
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            node_drained_set(node=node, drained=True)

    @admin.action(description="Undrain: accept new jobs again")
    def undrain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        for node in queryset:
            node_drained_set(node=node, drained=False)
