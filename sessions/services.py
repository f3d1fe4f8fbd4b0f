"""Writes to API keys and client session records."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.credentials import (
    id_new,
    secret_display_prefix,
    secret_hash,
    secret_new,
)
from core.errors import BadMessage, Unauthorized
from hotstate import sessions as hsessions
from sessions.models import ApiKey, ClientSession

logger = logging.getLogger(__name__)

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


# --- live sessions (async: called by the session consumer) --------------------------------------


@dataclass(frozen=True)
class Opened:
    session_id: str
    tenant: str
    resumed: bool
    previous_channel: str | None


def _session_record(*, session_id: str, api_key: ApiKey, instance_id: str, resumed: bool) -> None:
    if resumed:
        ClientSession.objects.filter(session_id=session_id).update(
            resumes=F("resumes") + 1, closed_at=None, instance_id=instance_id
        )
        return
    ClientSession.objects.create(
        session_id=session_id, api_key=api_key, tenant=api_key.tenant, instance_id=instance_id
    )


def _session_closed(*, session_id: str) -> None:
    ClientSession.objects.filter(session_id=session_id).update(closed_at=timezone.now())


async def session_open(
    *, key: str, requested_session_id: str | None, channel: str, instance_id: str
) -> Opened:
    """Authenticate a session socket and open (or resume) its session.

    A ``session_id`` of the same tenant that ended less than SESSION_RESUME_TTL ago, on any
    instance, is resumed (a socket still holding it is replaced); any other id starts a new
    session (PROTOCOL.md, session_init).
    """
    api_key = await database_sync_to_async(api_key_authenticate)(key=key)
    resume_ttl_ms = int(settings.SESSION_RESUME_TTL * 1000)
    if requested_session_id:
        opened = await hsessions.session_resume(
            session_id=requested_session_id,
            tenant=api_key.tenant,
            channel=channel,
            resume_ttl_ms=resume_ttl_ms,
        )
        if opened.resumed:
            await database_sync_to_async(_session_record)(
                session_id=requested_session_id,
                api_key=api_key,
                instance_id=instance_id,
                resumed=True,
            )
            logger.info("session %s resumed on %s", requested_session_id, channel)
            return Opened(requested_session_id, api_key.tenant, True, opened.previous_channel)
    session_id = id_new(prefix="s")
    await hsessions.session_start(
        session_id=session_id,
        tenant=api_key.tenant,
        channel=channel,
        resume_ttl_ms=resume_ttl_ms,
    )
    await database_sync_to_async(_session_record)(
        session_id=session_id, api_key=api_key, instance_id=instance_id, resumed=False
    )
    return Opened(session_id, api_key.tenant, False, None)


async def session_detach(*, session_id: str, channel: str) -> None:
    """The socket closed: keep the session resumable for SESSION_RESUME_TTL."""
    closed = await hsessions.session_close(
        session_id=session_id,
        channel=channel,
        resume_ttl_ms=int(settings.SESSION_RESUME_TTL * 1000),
    )
    if closed:
        await database_sync_to_async(_session_closed)(session_id=session_id)


async def session_hold(*, session_id: str, channel: str) -> bool:
    """Keep holding the session while its socket is open; False if another socket took it
    over."""
    return await hsessions.session_renew(
        session_id=session_id,
        channel=channel,
        resume_ttl_ms=int(settings.SESSION_RESUME_TTL * 1000),
    )
