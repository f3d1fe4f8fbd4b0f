from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.errors import BadMessage, Unauthorized
from sessions.models import ApiKey
from sessions.services import api_key_authenticate, api_key_create, api_key_issue

pytestmark = pytest.mark.django_db


def test_api_key_is_returned_once_and_stored_only_as_a_hash() -> None:
    api_key, key = api_key_create(tenant="acme")
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert key.startswith("sk_")
    assert key not in {stored.key_hash, stored.key_prefix}
    assert api_key_authenticate(key=key).tenant == "acme"


def test_an_inactive_or_replaced_key_is_refused() -> None:
    api_key, key = api_key_create(tenant="acme")
    new_key = api_key_issue(api_key=api_key)
    with pytest.raises(Unauthorized):
        api_key_authenticate(key=key)
    ApiKey.objects.filter(pk=api_key.pk).update(active=False)
    with pytest.raises(Unauthorized):
        api_key_authenticate(key=new_key)


@pytest.mark.parametrize("tenant", ["", "a:b", "a{b}", "has space", "x" * 101])
def test_tenants_that_would_break_key_tags_are_refused(tenant: str) -> None:
    with pytest.raises(BadMessage):
        api_key_create(tenant=tenant)
    assert not ApiKey.objects.exists()


def test_create_api_key_prints_the_key_as_the_last_line() -> None:
    out = StringIO()
    call_command("create_api_key", "acme", "--name", "ci", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert api_key_authenticate(key=key).name == "ci"


def test_create_api_key_reports_a_bad_tenant_clearly() -> None:
    with pytest.raises(CommandError, match="tenant"):
        call_command("create_api_key", "bad:tenant", stdout=StringIO())
