"""The operator page: staff only, shows online nodes and recent job history."""

from __future__ import annotations

import datetime as dt

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.utils import timezone

from hotstate import nodes as hnodes
from hotstate.nodes import NodeCaps, NodeLoad
from jobs.models import JobRecord

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]


async def test_anonymous_visitors_are_sent_to_the_admin_login(async_client) -> None:
    response = await async_client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/dashboard/")


async def test_staff_see_online_nodes_and_recent_jobs(async_client) -> None:
    user = await database_sync_to_async(User.objects.create_user)(
        "ops", password="a-long-ops-password", is_staff=True
    )
    await async_client.aforce_login(user)
    await hnodes.node_publish(
        node_id="n_dash1",
        channel="test.channel",
        caps=NodeCaps(max_jobs=4, node_version="1", services={"asr": []}),
        load=NodeLoad(cpu_pct=12, mem_pct=34),
        register=True,
    )
    await database_sync_to_async(JobRecord.objects.create)(
        job_id="j_dash1",
        request_id="r-1",
        tenant="acme",
        service_id="asr",
        state="FINISHED",
        created_at=timezone.now() - dt.timedelta(seconds=2),
        finished_at=timezone.now(),
    )
    response = await async_client.get("/dashboard")
    page = response.content.decode()
    assert response.status_code == 200
    assert "Nodes online: 1" in page
    assert "n_dash1" in page and "0 / 4" in page
    assert "FINISHED: 1" in page
    assert "j_dash1" in page
