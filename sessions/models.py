from __future__ import annotations

from django.db import models


class ApiKey(models.Model):
    """A tenant's key for sessions and the HTTP API; only its hash is stored."""

    tenant = models.CharField(max_length=100, db_index=True)
    name = models.CharField(max_length=200, blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=16, editable=False)
    active = models.BooleanField(default=True, help_text="An inactive key is refused (401/4401).")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant", "created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.tenant}: {self.key_prefix}… {self.name}".strip()


class ClientSession(models.Model):
    """One WebSocket session of a tenant, kept for audit; resume state lives in Redis."""

    session_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="sessions")
    tenant = models.CharField(max_length=100, db_index=True)
    instance_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    resumes = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.session_id
