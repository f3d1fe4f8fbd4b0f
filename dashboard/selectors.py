"""Reads for the operator pages and the health probes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.db.models import Count
from django.utils import timezone

from core.runtime import instance_heartbeat, runtime_get
from hotstate.directory import node_directory_read
from hotstate.errors import DependencyDown
from hotstate.health import cluster_health
from jobs.models import JobRecord


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str
    checks: dict[str, dict[str, object]]


async def readiness() -> Readiness:
    """Whether this instance should receive traffic: every check must pass (PROTOCOL.md, HTTP).

    1. Redis Cluster serves every slot.
    2. This instance is registered (its presence key lives) and is not draining.
    """
    runtime = runtime_get()
    cluster = await cluster_health()
    checks: dict[str, dict[str, object]] = {
        "redis_cluster": {"ok": cluster.ok, "reason": cluster.reason, **cluster.details},
    }
    instance: dict[str, object] = {"instance_id": runtime.instance_id}
    if runtime.draining:
        instance.update(ok=False, reason="draining: stopping, reconnect elsewhere")
    elif not cluster.ok:
        instance.update(ok=False, reason="cannot register without Redis Cluster")
    else:
        try:
            # Registering here too means the first probe after start-up need not wait for the
            # heartbeat duty's first round.
            await instance_heartbeat()
            instance.update(ok=True, reason="ok")
        except DependencyDown as exc:
            instance.update(ok=False, reason=f"registration failed: {exc}")
    checks["instance"] = instance
    failing = [f"{name}: {check['reason']}" for name, check in checks.items() if not check["ok"]]
    return Readiness(ok=not failing, reason="; ".join(failing) or "ok", checks=checks)


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    services: str
    live: int
    max_jobs: int
    cpu_pct: float
    mem_pct: float
    gpu_pct: float | None
    drained: bool


async def dashboard_overview() -> dict[str, object]:
    """What the operator page shows: online nodes (read now) and recent job history."""
    try:
        views = await node_directory_read()
        nodes_error = ""
    except DependencyDown as exc:
        views, nodes_error = [], str(exc)
    nodes = [
        NodeRow(
            node_id=view.node_id,
            services=", ".join(sorted(view.caps.services)),
            live=view.live,
            max_jobs=view.caps.max_jobs,
            cpu_pct=view.load.cpu_pct,
            mem_pct=view.load.mem_pct,
            gpu_pct=view.load.gpu_pct,
            drained=view.drained,
        )
        for view in sorted(views, key=lambda v: v.node_id)
    ]
    history = await database_sync_to_async(_job_history)()
    return {
        "nodes": nodes,
        "nodes_error": nodes_error,
        "slots_used": sum(n.live for n in nodes),
        "slots_total": sum(n.max_jobs for n in nodes),
        **history,
    }


def _job_history() -> dict[str, object]:
    since = timezone.now() - dt.timedelta(hours=1)
    by_state = dict(
        JobRecord.objects.filter(finished_at__gte=since)
        .values_list("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    recent = list(JobRecord.objects.order_by("-finished_at")[:25])
    return {"ended_last_hour": by_state, "recent_jobs": recent}
