"""Operator-facing HTTP endpoints: liveness and readiness (dashboard pages come later)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from dashboard.selectors import readiness


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Redis is not consulted, so a cluster outage does not get
    every instance restarted by its supervisor; /readyz is the check that takes traffic away."""
    return JsonResponse({"status": "ok"})


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    report = await readiness()
    body: dict[str, object] = {
        "status": "ready" if report.ok else "not_ready",
        "checks": report.checks,
    }
    if not report.ok:
        body["reason"] = report.reason
    return JsonResponse(body, status=200 if report.ok else 503)
