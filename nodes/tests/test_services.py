from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.errors import BadMessage, Unauthorized
from nodes.models import Node
from nodes.services import node_authenticate, node_create, node_token_issue

pytestmark = pytest.mark.django_db


def test_node_token_is_returned_once_and_stored_only_as_a_hash() -> None:
    node, token = node_create(name="gpu-01")
    stored = Node.objects.get(pk=node.pk)
    assert token.startswith("nt_")
    assert token not in {stored.token_hash, stored.token_prefix}
    assert token.startswith(stored.token_prefix)
    assert node_authenticate(token=token).node_id == node.node_id


def test_node_id_is_stable_when_the_token_is_reissued() -> None:
    node, old_token = node_create(name="gpu-02")
    new_token = node_token_issue(node=node)
    assert node_authenticate(token=new_token).node_id == node.node_id
    with pytest.raises(Unauthorized):
        node_authenticate(token=old_token)


@pytest.mark.parametrize("token", ["", "nt_not-a-real-token"])
def test_unknown_or_empty_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        node_authenticate(token=token)


def test_a_disabled_node_is_refused() -> None:
    node, token = node_create(name="gpu-03")
    Node.objects.filter(pk=node.pk).update(enabled=False)
    with pytest.raises(Unauthorized, match="disabled"):
        node_authenticate(token=token)


def test_node_names_are_unique_and_required() -> None:
    node_create(name="gpu-04")
    with pytest.raises(BadMessage, match="already exists"):
        node_create(name="gpu-04")
    with pytest.raises(BadMessage, match="needs a name"):
        node_create(name="  ")
    assert Node.objects.count() == 1


def test_create_node_token_prints_the_token_as_the_last_line() -> None:
    out = StringIO()
    call_command("create_node_token", "gpu-05", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert node_authenticate(token=token).name == "gpu-05"


def test_create_node_token_refuses_a_duplicate_name_clearly() -> None:
    call_command("create_node_token", "gpu-06", stdout=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_node_token", "gpu-06", stdout=StringIO())
