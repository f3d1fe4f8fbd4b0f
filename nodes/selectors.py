"""Reads about nodes: which ones can take a job now, best first."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection

from django.conf import settings

from hotstate.directory import NodeView
from hotstate.nodes import service_mark
from nodes.snapshot import NodeSnapshot

logger = logging.getLogger(__name__)


def _marked(node: NodeView, mark: str, now_ms: int) -> bool:
    expiry = node.unavailable.get(mark)
    return expiry is not None and expiry > now_ms


def node_exclusion(
    node: NodeView,
    *,
    service_id: str,
    service_version: str | None,
    features: Collection[str],
    now_ms: int,
) -> str | None:
    """Why ``node`` cannot take the job now, or None if it can (DESIGN.md, step 2: filter)."""
    if node.drained:
        return "drained"
    versions = node.caps.services.get(service_id)
    if versions is None:
        return "service"
    if service_version is not None and service_version not in versions:
        return "version"
    if not set(features) <= set(node.caps.features):
        return "features"
    if _marked(node, service_id, now_ms) or (
        service_version is not None
        and _marked(node, service_mark(service_id, service_version), now_ms)
    ):
        return "unavailable"
    load = node.load
    if load.cpu_pct > settings.SELECT_MAX_CPU_PCT or load.mem_pct > settings.SELECT_MAX_MEM_PCT:
        return "resources"
    if load.gpu_pct is not None and load.gpu_pct > settings.SELECT_MAX_GPU_PCT:
        return "resources"
    # A node that looks full is not excluded: the snapshot may be a second old and a slot freed
    # since is usable at once (PROTOCOL.md). It ranks last, and the reserve script decides.
    return None


def node_candidates(
    *,
    snapshot: NodeSnapshot,
    service_id: str,
    service_version: str | None,
    features: Collection[str],
    exclude: Collection[str] = (),
) -> list[NodeView]:
    """Nodes that may take the job, least loaded first (reservations / max_jobs), ties random.

    Each exclusion is counted by reason in ``snapshot.exclusions`` for the metrics.
    """
    ranked: list[tuple[float, float, NodeView]] = []
    now = int(time.time() * 1000)
    for node in snapshot.nodes.values():
        if node.node_id in exclude:
            snapshot.exclusions["excluded"] += 1
            continue
        reason = node_exclusion(
            node,
            service_id=service_id,
            service_version=service_version,
            features=features,
            now_ms=now,
        )
        if reason is not None:
            snapshot.exclusions[reason] += 1
            logger.debug("node %s excluded for %s: %s", node.node_id, service_id, reason)
            continue
        ranked.append((node.live / node.caps.max_jobs, random.random(), node))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [node for _, _, node in ranked]
