"""/healthz and /readyz as an operator or a load balancer sees them."""

from __future__ import annotations

import pytest

from hotstate.client import close_client
from tests.e2e.harness.http import http
from tests.support.ports import free_port


@pytest.mark.parametrize("path", ["/healthz", "/healthz/"])
async def test_healthz_answers_with_or_without_slash(async_client, path: str) -> None:
    response = await async_client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/readyz/"])
@pytest.mark.usefixtures("scheduler")  # readiness registers the instance: under its own prefix
async def test_readyz_is_ready_when_the_cluster_serves_every_slot(
    async_client, settings, redis_cluster_url: str, path: str
) -> None:
    settings.REDIS_CLUSTER_URL = redis_cluster_url
    await close_client()
    response = await async_client.get(path)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["redis_cluster"]["slots_ok"] == 16384
    await close_client()


async def test_readyz_is_503_with_a_reason_when_the_cluster_is_unreachable(
    async_client, settings
) -> None:
    settings.REDIS_CLUSTER_URL = f"redis://127.0.0.1:{free_port()}"
    await close_client()
    response = await async_client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "not_ready"
    assert "Redis Cluster unreachable" in body["reason"]
    await close_client()


async def test_readyz_rejects_other_methods(async_client) -> None:
    response = await async_client.post("/readyz")
    assert response.status_code == 405


@pytest.mark.e2e
def test_real_daphne_serves_health_and_readiness(daphne_factory) -> None:
    server = daphne_factory()
    assert http("GET", f"{server.url}/healthz") == (200, {"status": "ok"})
    status, body = http("GET", f"{server.url}/readyz")
    assert status == 200, body


@pytest.mark.e2e
def test_real_daphne_reports_not_ready_when_the_cluster_is_down(daphne_factory) -> None:
    server = daphne_factory(REDIS_CLUSTER_URL=f"redis://127.0.0.1:{free_port()}")
    assert http("GET", f"{server.url}/healthz")[0] == 200
    status, body = http("GET", f"{server.url}/readyz")
    assert status == 503
    assert body["reason"].startswith("redis_cluster: Redis Cluster unreachable")
