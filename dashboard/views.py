"""Operator-facing HTTP endpoints: liveness and readiness (dashboard pages come later)."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from core.runtime import runtime_get
from dashboard.selectors import dashboard_overview, readiness


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


async def dashboard_home(request: HttpRequest) -> HttpResponse:
    """The operator page (staff only): refreshes itself every few seconds."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return redirect_to_login(request.get_full_path(), login_url=reverse("admin:login"))
    context = await dashboard_overview()
    context["instance_id"] = runtime_get().instance_id
    return TemplateResponse(request, "dashboard/home.html", context)
