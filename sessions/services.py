"""Writes to API keys and client session records."""

from __future__ import annotations

from scheduler_project.credentials import secret_display_prefix, secret_hash, secret_new
from scheduler_project.errors import BadMessage, Unauthorized
from sessions.models import ApiKey

API_KEY_PREFIX = "sk"
MAX_TENANT_LENGTH = 100


def api_key_create(*, tenant: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for ``tenant``; the key is returned once and stored only hashed."""
    tenant = tenant.strip()
    if not tenant:
        raise BadMessage("an API key needs a tenant")
    if len(tenant) > MAX_TENANT_LENGTH or any(c in tenant for c in "{}: \t\n"):
        raise BadMessage(
            f"tenant must be at most {MAX_TENANT_LENGTH} characters, without braces, colons or "
            "whitespace"
        )
    api_key = ApiKey(tenant=tenant, name=name)
    key = api_key_issue(api_key=api_key)
    return api_key, key


def api_key_issue(*, api_key: ApiKey) -> str:
    """A new secret for ``api_key`` (saving a new record too); any old one stops working."""
    key = secret_new(prefix=API_KEY_PREFIX)
    api_key.key_hash = secret_hash(key)
    api_key.key_prefix = secret_display_prefix(key)
    if api_key.pk is None:
        api_key.save()
    else:
        api_key.save(update_fields=["key_hash", "key_prefix"])
    return key


def api_key_authenticate(*, key: str) -> ApiKey:
    """The active API key record for ``key``."""
    if not key:
        raise Unauthorized("an API key is required")
    api_key = ApiKey.objects.filter(key_hash=secret_hash(key), active=True).first()
    if api_key is None:
        raise Unauthorized("unknown or inactive API key")
    return api_key
