from __future__ import annotations

from dataclasses import dataclass

from hotstate.health import cluster_health


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str
    checks: dict[str, dict[str, object]]


async def readiness() -> Readiness:
    """Whether this instance should receive traffic: every check must pass.

    Today that is Redis Cluster reachability; instance registration joins it once instances
    register themselves (PROTOCOL.md, HTTP).
    """
    cluster = await cluster_health()
    checks: dict[str, dict[str, object]] = {
        "redis_cluster": {"ok": cluster.ok, "reason": cluster.reason, **cluster.details},
    }
    failing = [f"{name}: {check['reason']}" for name, check in checks.items() if not check["ok"]]
    return Readiness(ok=not failing, reason="; ".join(failing) or "ok", checks=checks)
