from __future__ import annotations

from django.db import models

from core.credentials import id_new


def node_id_new() -> str:
    return id_new(prefix="n")


class Node(models.Model):
    """A worker machine's durable identity; its live state (presence, load) is in Redis."""

    node_id = models.CharField(max_length=64, unique=True, default=node_id_new, editable=False)
    name = models.CharField(max_length=200, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=16, editable=False)
    enabled = models.BooleanField(
        default=True, help_text="A disabled node's token is refused (4401)."
    )
    drained = models.BooleanField(
        default=False, help_text="A drained node gets no new jobs; running ones finish."
    )
    declared_capabilities = models.JSONField(
        default=dict, blank=True, help_text="What the node declared at its last registration."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.node_id})"
