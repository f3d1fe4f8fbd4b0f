"""Operators create nodes and keys in the admin and see each secret exactly once."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User

from hotstate import nodes as hnodes
from hotstate import slots as hslots
from hotstate.client import build_client
from hotstate.nodes import NodeCaps, NodeLoad
from nodes.models import Node
from nodes.services import node_authenticate
from sessions.models import ApiKey
from sessions.services import api_key_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    User.objects.create_superuser("admin", "admin@example.com", "a-long-admin-password")
    client.login(username="admin", password="a-long-admin-password")
    return client


def _secret_in(response, prefix: str) -> str:
    """The newest secret the page shows (earlier messages may still be queued)."""
    text = response.content.decode()
    found = re.findall(rf"\b({prefix}_[A-Za-z0-9_-]{{40,}})", text)
    assert found, text[:2000]
    return found[-1]


def test_adding_a_node_in_the_admin_shows_its_token_once(staff_client) -> None:
    response = staff_client.post(
        "/admin/nodes/node/add/", {"name": "gpu-admin", "enabled": "on"}, follow=True
    )
    token = _secret_in(response, "nt")
    assert node_authenticate(token=token).name == "gpu-admin"
    again = staff_client.get("/admin/nodes/node/")
    assert token not in again.content.decode()


def test_issuing_a_new_node_token_replaces_the_old_one(staff_client) -> None:
    staff_client.post("/admin/nodes/node/add/", {"name": "gpu-rot", "enabled": "on"})
    node = Node.objects.get(name="gpu-rot")
    old_hash = node.token_hash
    response = staff_client.post(
        "/admin/nodes/node/",
        {"action": "issue_new_token", "_selected_action": [node.pk]},
        follow=True,
    )
    token = _secret_in(response, "nt")
    node.refresh_from_db()
    assert node.token_hash != old_hash
    assert node_authenticate(token=token).pk == node.pk


def test_adding_an_api_key_in_the_admin_shows_it_once(staff_client) -> None:
    response = staff_client.post(
        "/admin/client_sessions/apikey/add/",
        {"tenant": "acme", "name": "web", "active": "on"},
        follow=True,
    )
    key = _secret_in(response, "sk")
    assert api_key_authenticate(key=key).tenant == "acme"
    assert ApiKey.objects.count() == 1


async def _publish(url: str, node_id: str) -> None:
    client = build_client(url)
    try:
        await hnodes.node_publish(
            node_id=node_id,
            channel="test.channel",
            caps=NodeCaps(max_jobs=1, node_version="1", services={"asr": []}),
            load=NodeLoad(cpu_pct=1, mem_pct=1),
            register=True,
            client=client,
        )
    finally:
        await client.aclose()


async def _reserve(url: str, node_id: str, job_id: str) -> hslots.ReserveOutcome:
    client = build_client(url)
    try:
        reservation = await hslots.slot_reserve(
            node_id=node_id, job_id=job_id, attempt=1, service_id="asr", client=client
        )
    finally:
        await client.aclose()
    return reservation.outcome


def test_the_drain_action_stops_jobs_to_an_online_node_at_once(
    staff_client, redis_cluster_url, hot_prefix
) -> None:
    url = redis_cluster_url
    staff_client.post("/admin/nodes/node/add/", {"name": "gpu-drain", "enabled": "on"})
    node = Node.objects.get(name="gpu-drain")
    async_to_sync(_publish)(url, node.node_id)
    staff_client.post("/admin/nodes/node/", {"action": "drain", "_selected_action": [node.pk]})
    node.refresh_from_db()
    assert node.drained
    reserved = async_to_sync(_reserve)(url, node.node_id, "j_1")
    assert reserved is hslots.ReserveOutcome.DRAINED
    staff_client.post("/admin/nodes/node/", {"action": "undrain", "_selected_action": [node.pk]})
    assert async_to_sync(_reserve)(url, node.node_id, "j_2") is hslots.ReserveOutcome.RESERVED
