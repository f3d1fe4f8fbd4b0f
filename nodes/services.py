"""Writes to node records."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from nodes.models import Node
from scheduler_project.credentials import secret_display_prefix, secret_hash, secret_new
from scheduler_project.errors import BadMessage, Unauthorized

NODE_TOKEN_PREFIX = "nt"


def node_create(*, name: str) -> tuple[Node, str]:
    """A new node record and its token; the token is returned once and stored only hashed."""
    name = name.strip()
    if not name:
        raise BadMessage("a node needs a name")
    if Node.objects.filter(name=name).exists():
        raise BadMessage(f"a node named {name!r} already exists")
    node = Node(name=name)
    token = node_token_issue(node=node)
    return node, token


def node_token_issue(*, node: Node) -> str:
    """A new token for ``node`` (saving a new record too); any old token stops working at once."""
    token = secret_new(prefix=NODE_TOKEN_PREFIX)
    node.token_hash = secret_hash(token)
    node.token_prefix = secret_display_prefix(token)
    if node.pk is None:
        node.save()
    else:
        node.save(update_fields=["token_hash", "token_prefix"])
    return token


def node_authenticate(*, token: str) -> Node:
    """The enabled node that ``token`` belongs to."""
    if not token:
        raise Unauthorized("a node token is required")
    node = Node.objects.filter(token_hash=secret_hash(token), enabled=True).first()
    if node is None:
        raise Unauthorized("unknown or disabled node token")
    return node


def node_registration_record(*, node_id: str, capabilities: dict[str, object]) -> None:
    """Remember what a node declared at registration, and when it was last seen."""
    with transaction.atomic():
        Node.objects.filter(node_id=node_id).update(
            declared_capabilities=capabilities, last_seen_at=timezone.now()
        )


def node_drained_set(*, node: Node, drained: bool) -> None:
    node.drained = drained
    node.save(update_fields=["drained"])
