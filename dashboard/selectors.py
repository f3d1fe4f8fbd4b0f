from __future__ import annotations

from dataclasses import dataclass

from hotstate import owners as howners
from hotstate.errors import DependencyDown
from hotstate.health import cluster_health
from scheduler_project.duties import INSTANCE_TTL_MS
from scheduler_project.runtime import runtime_get


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
            await howners.instance_register(instance_id=runtime.instance_id, ttl_ms=INSTANCE_TTL_MS)
            instance.update(ok=True, reason="ok")
        except DependencyDown as exc:
            instance.update(ok=False, reason=f"registration failed: {exc}")
    checks["instance"] = instance
    failing = [f"{name}: {check['reason']}" for name, check in checks.items() if not check["ok"]]
    return Readiness(ok=not failing, reason="; ".join(failing) or "ok", checks=checks)
