"""The HTTP API, as an API client sees it (PROTOCOL.md, HTTP)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from hotstate import jobs as hjobs
from hotstate.jobs import JobState
from sessions.models import ApiKey
from tests.support.inprocess import (
    new_api_key,
    online_node,
    online_session,
    reply,
    submit,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("scheduler")]

BODY = {"request_id": "r-1", "service": {"id": "asr"}, "payload": {"audio": "..."}}


@pytest.fixture
async def api() -> Api:
    # A tenant of its own: the API's rate limiter is per tenant and lives as long as the process.
    tenant = f"api-{secrets.token_hex(4)}"
    return Api(tenant=tenant, key=await new_api_key(tenant))


class Api:
    def __init__(self, *, tenant: str, key: str) -> None:
        self.tenant = tenant
        self.key = key
        self.client = AsyncClient()

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        data = body if isinstance(body, str | bytes) else json.dumps(body if body else {})
        headers = kwargs.pop("headers", self.auth())
        return await self.client.post(
            path, data=data, content_type="application/json", headers=headers, **kwargs
        )

    async def get(self, path: str, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", self.auth())
        return await self.client.get(path, headers=headers, **kwargs)


def refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code


# --- POST /api/v1/jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/"])
async def test_a_submit_is_accepted_with_202_and_dispatched(api: Api, path: str) -> None:
    node_id, node = await online_node("gpu")
    response = await api.post(path, BODY)
    assert response.status_code == 202
    body = response.json()
    assert body == {
        "job_id": body["job_id"],
        "request_id": "r-1",
        "status": "DISPATCHED",
        "node_id": node_id,
    }
    assign = await node.receive()
    assert (assign["type"], assign["job_id"], assign["payload"]) == (
        "job_assign",
        body["job_id"],
        {"audio": "..."},
    )


async def test_a_duplicate_submit_answers_the_same_job_and_dispatches_once(api: Api) -> None:
    _, node = await online_node("gpu")
    first = (await api.post("/api/v1/jobs", BODY)).json()
    assign = await node.receive()
    await node.send(reply(assign, "job_ack"))
    assert await node.settle() == []
    again = await api.post("/api/v1/jobs/", BODY)
    assert again.status_code == 202
    assert again.json() == {**first, "status": "ACCEPTED"}
    assert await node.nothing(0.1)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"request_id": "r-1", "service": {"id": "asr"}}),
        json.dumps({**BODY, "request_id": 5}),
        json.dumps({**BODY, "timeout_ms": 10**9}),
    ],
    ids=["not-json", "not-an-object", "no-payload", "numeric-request-id", "timeout-too-long"],
)
async def test_a_bad_body_is_refused_400_bad_message(api: Api, body: str) -> None:
    await online_node("gpu")
    refused(await api.post("/api/v1/jobs", body), 400, "BAD_MESSAGE")


async def test_an_unknown_service_is_refused_404(api: Api) -> None:
    await online_node("gpu")
    body = {**BODY, "service": {"id": "tts"}}
    refused(await api.post("/api/v1/jobs", body), 404, "UNKNOWN_SERVICE")


async def test_a_payload_too_large_is_refused_413(api: Api, settings) -> None:
    settings.MAX_PAYLOAD_BYTES = 100
    await online_node("gpu")
    body = {**BODY, "payload": {"audio": "x" * 100}}
    refused(await api.post("/api/v1/jobs", body), 413, "PAYLOAD_TOO_LARGE")


async def test_no_available_node_is_refused_503_and_the_request_id_stays_free(api: Api) -> None:
    _, node = await online_node("gpu", max_jobs=1)
    assert (await api.post("/api/v1/jobs", {**BODY, "request_id": "r-0"})).status_code == 202
    assign = await node.receive()
    refused(await api.post("/api/v1/jobs", BODY), 503, "NO_AVAILABLE_NODE")
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True))
    assert await node.settle() == []
    assert (await api.post("/api/v1/jobs", BODY)).status_code == 202


async def test_a_tenant_over_its_rate_limit_is_refused_429(api: Api, settings) -> None:
    settings.RATE_LIMIT_BURST = 2
    settings.RATE_LIMIT_PER_S = 0.1
    await online_node("gpu")
    statuses = [
        (await api.post("/api/v1/jobs", {**BODY, "request_id": f"r-{n}"})).status_code
        for n in range(2)
    ]
    assert statuses == [202, 202]
    refused(await api.post("/api/v1/jobs", {**BODY, "request_id": "r-9"}), 429, "RATE_LIMITED")
    refused(await api.get("/api/v1/jobs/j_any"), 429, "RATE_LIMITED")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer ", "Bearer sk_wrong", "Basic c2s6eA==", "inactive"],
    ids=["missing", "empty", "no-key", "unknown-key", "other-scheme", "inactive-key"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/api/v1/jobs"), ("get", "/api/v1/jobs/j_1"), ("post", "/api/v1/jobs/j_1/cancel")],
)
async def test_a_missing_or_bad_key_is_refused_401(
    api: Api, authorization: str | None, method: str, path: str
) -> None:
    if authorization == "inactive":
        await database_sync_to_async(ApiKey.objects.filter(tenant=api.tenant).update)(active=False)
        authorization = f"Bearer {api.key}"
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await getattr(api, method)(path, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"


async def test_routes_never_redirect(api: Api) -> None:
    for path in ("/api/v1/jobs/j_1", "/api/v1/jobs/j_1/", "/api/v1/jobs/j_1/cancel/"):
        method = api.post if path.endswith("cancel/") else api.get
        response = await method(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "JOB_NOT_FOUND"


# --- GET /api/v1/jobs/<job_id> --------------------------------------------------------------------


async def test_a_job_reads_back_with_its_result_once_finished(api: Api) -> None:
    node_id, node = await online_node("gpu")
    job_id = (await api.post("/api/v1/jobs", BODY)).json()["job_id"]
    assign = await node.receive()
    response = await api.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json() == {
        "job_id": job_id,
        "request_id": "r-1",
        "status": "DISPATCHED",
        "attempt": 1,
        "node_id": node_id,
    }
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_progress", progress=0.5))
    await node.send(reply(assign, "job_result", ok=True, result={"text": "hi"}))
    # No session waits for an HTTP job: the node's reports are taken without an error.
    assert await node.settle() == []
    response = await api.get(f"/api/v1/jobs/{job_id}/")
    assert response.json() == {
        "job_id": job_id,
        "request_id": "r-1",
        "status": "FINISHED",
        "attempt": 1,
        "node_id": node_id,
        "result": {"text": "hi"},
    }


async def test_a_failed_job_reads_back_with_its_error(api: Api) -> None:
    _, node = await online_node("gpu")
    job_id = (await api.post("/api/v1/jobs", BODY)).json()["job_id"]
    assign = await node.receive()
    await node.send(reply(assign, "job_ack"))
    error = {"code": "CUDA_OOM", "message": "out of memory"}
    await node.send(reply(assign, "job_result", ok=False, error=error))
    assert await node.settle() == []
    body = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert (body["status"], body["error"]) == ("FAILED", error)
    assert "result" not in body


async def test_another_tenants_job_is_not_found(api: Api) -> None:
    await online_node("gpu")
    job_id = (await api.post("/api/v1/jobs", BODY)).json()["job_id"]
    other = Api(tenant="globex", key=await new_api_key("globex"))
    refused(await other.get(f"/api/v1/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
    refused(await other.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "JOB_NOT_FOUND")
    assert (await api.get(f"/api/v1/jobs/{job_id}")).status_code == 200


# --- POST /api/v1/jobs/<job_id>/cancel ------------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"])
async def test_cancel_answers_200_and_tells_the_node(api: Api, slash: str) -> None:
    _, node = await online_node("gpu", max_jobs=1)
    job_id = (await api.post("/api/v1/jobs", BODY)).json()["job_id"]
    assign = await node.receive()
    response = await api.post(f"/api/v1/jobs/{job_id}/cancel{slash}")
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "status": "CANCELLED"}
    assert await node.receive() == {
        "type": "job_cancel",
        "job_id": job_id,
        "attempt": assign["attempt"],
        "reason": "CANCELLED",
    }
    body = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert (body["status"], body["error"]["code"]) == ("CANCELLED", "CANCELLED")
    refused(await api.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "JOB_NOT_FOUND")
    # The slot is free at once.
    assert (await api.post("/api/v1/jobs", {**BODY, "request_id": "r-2"})).status_code == 202


# --- HTTP and WebSocket together ------------------------------------------------------------------


async def test_an_http_and_a_websocket_submit_of_one_request_id_are_one_job(api: Api) -> None:
    _, node = await online_node("gpu")
    created = (await api.post("/api/v1/jobs", BODY)).json()
    _, session = await online_session(api.key)
    await session.send(submit("r-1"))
    accepted = await session.receive()
    assert (accepted["type"], accepted["job_id"]) == ("job_accepted", created["job_id"])
    assign = await node.receive()
    assert await node.nothing(0.1)
    await node.send(reply(assign, "job_ack"))
    await node.send(reply(assign, "job_result", ok=True, result={"text": "both"}))
    result = await session.receive()
    assert (result["job_id"], result["result"]) == (created["job_id"], {"text": "both"})
    job = await hjobs.job_get(job_id=created["job_id"])
    assert job is not None and job.state is JobState.FINISHED
