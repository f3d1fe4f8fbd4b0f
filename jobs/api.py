"""HTTP API (PROTOCOL.md, HTTP): submit, read and cancel jobs with a bearer API key."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from core.errors import HTTP_STATUS, Unauthorized, error_reply
from core.ratelimit import FrameLimiter, Verdict
from core.state import STATE
from hotstate import jobs as hjobs
from hotstate.jobs import JobView
from jobs import services as jobs
from jobs.selectors import job_view
from protocol import ErrorCode, JobSubmit, ProtocolError, parse_inbound
from sessions.delivery import result_frame
from sessions.services import api_key_authenticate

logger = logging.getLogger(__name__)

View = Callable[..., Coroutine[Any, Any, JsonResponse]]


class TenantLimiters(dict[str, FrameLimiter]):
    """Each tenant's HTTP rate limiter in this process, by tenant (a part of ``STATE``)."""


def _error(code: ErrorCode, message: str) -> JsonResponse:
    return JsonResponse({"code": code.value, "message": message}, status=HTTP_STATUS[code])


def api_view(*methods: str) -> Callable[[View], View]:
    """Bearer authentication, method check, rate limit and error mapping for an API view."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                response = JsonResponse(
                    {"code": "BAD_MESSAGE", "message": f"use {' or '.join(methods)}"}, status=405
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                tenant = await _tenant_of(request)
                if not _allowed(tenant):
                    return _error(ErrorCode.RATE_LIMITED, "too many requests")
                return await view(request, tenant, *args, **kwargs)
            except Exception as exc:
                code, message = error_reply(exc)
                if code is ErrorCode.INTERNAL_ERROR:
                    logger.exception("API %s %s failed", request.method, request.path)
                return _error(code, message)

        return wrapper

    return decorate


async def _tenant_of(request: HttpRequest) -> str:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send Authorization: Bearer <api_key>")
    api_key = await database_sync_to_async(api_key_authenticate)(key=key.strip())
    return str(api_key.tenant)


def _allowed(tenant: str) -> bool:
    limiters = STATE.part(TenantLimiters)
    limiter = limiters.get(tenant)
    if limiter is None:
        limiter = FrameLimiter.build(
            rate=settings.RATE_LIMIT_PER_S, burst=settings.RATE_LIMIT_BURST
        )
        limiters[tenant] = limiter
    return limiter.check() is Verdict.ALLOW


def _parse_submit(body: bytes) -> JobSubmit:
    try:
        fields = json.loads(body or b"null")
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the body is not JSON") from None
    if not isinstance(fields, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the body must be a JSON object")
    frame = parse_inbound(json.dumps({**fields, "type": "job_submit"}), peer="session")
    assert isinstance(frame, JobSubmit)
    return frame


def _job_body(job: JobView) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": job.job_id,
        "request_id": job.request_id,
        "status": job.state.value,
        "attempt": job.attempt,
        "node_id": job.node_id,
    }
    if job.state.terminal:
        frame = result_frame(job)
        if frame.result is not None:
            body["result"] = frame.result
        if frame.error is not None:
            body["error"] = frame.error.model_dump()
    return body


@api_view("POST")
async def jobs_create(request: HttpRequest, tenant: str) -> JsonResponse:
    try:
        submit = _parse_submit(request.body)
    except ProtocolError as exc:
        return _error(ErrorCode.BAD_MESSAGE, exc.message)
    accepted = await jobs.job_submit(tenant=tenant, session_id="", submit=submit)
    status = "DISPATCHED"
    if accepted.duplicate:
        job = await hjobs.job_get(job_id=accepted.job_id)
        status = job.state.value if job else status
    return JsonResponse(
        {
            "job_id": accepted.job_id,
            "request_id": accepted.request_id,
            "status": status,
            "node_id": accepted.node_id,
        },
        status=202,
    )


@api_view("GET")
async def jobs_detail(request: HttpRequest, tenant: str, job_id: str) -> JsonResponse:
    job = await job_view(tenant=tenant, job_id=job_id)
    return JsonResponse(_job_body(job))


@api_view("POST")
async def jobs_cancel(request: HttpRequest, tenant: str, job_id: str) -> JsonResponse:
    job = await jobs.job_cancel(tenant=tenant, job_id=job_id)
    return JsonResponse({"job_id": job.job_id, "status": job.state.value})
