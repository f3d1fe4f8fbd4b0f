"""This instance's in-memory view of every node, refreshed from Redis about once a second.

Selection ranks candidates from it without a Redis round trip. It may be stale by up to a
refresh interval; the reserve script is the authority, and its refusals are folded back in at
once (``note_refusal``) so one instance does not keep choosing a node that just filled up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from channels.db import database_sync_to_async

from core.errors import UnknownService
from core.state import STATE
from hotstate import directory as hdirectory
from hotstate.directory import NodeView
from hotstate.slots import ReserveOutcome
from nodes.models import Node

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 1.0
CATALOG_INTERVAL_S = 30.0


@dataclass
class NodeSnapshot:
    nodes: dict[str, NodeView] = field(default_factory=dict)
    # Every service a node has offered: from the live snapshot and from the node records.
    catalog: set[str] = field(default_factory=set)
    refreshed_at: float = 0.0
    catalog_refreshed_at: float = 0.0
    exclusions: Counter[str] = field(default_factory=Counter)

    # What this instance noted (registered, removed, drained, capabilities) while a refresh
    # read was in flight: the read may predate it, so it is applied again on top of the read.
    noted: dict[str, NodeView | None] = field(default_factory=dict)

    async def refresh(self) -> None:
        self.noted = {}
        views = await hdirectory.node_directory_read()
        nodes = {view.node_id: view for view in views}
        for node_id, noted in self.noted.items():
            if noted is None:
                nodes.pop(node_id, None)
            else:
                nodes[node_id] = noted
        self.nodes = nodes
        for view in nodes.values():
            self.catalog.update(view.caps.services)
        self.refreshed_at = time.monotonic()

    async def refresh_catalog(self) -> None:
        self.catalog.update(await database_sync_to_async(_declared_services)())
        self.catalog_refreshed_at = time.monotonic()

    def require_known_service(self, service_id: str) -> None:
        if service_id not in self.catalog:
            raise UnknownService(f"no node has offered service {service_id!r}")

    # --- what this instance learnt before the next refresh ------------------------------------

    def note_registered(self, view: NodeView) -> None:
        self.nodes[view.node_id] = self.noted[view.node_id] = view
        self.catalog.update(view.caps.services)

    def note_removed(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.noted[node_id] = None

    def note_published(self, view: NodeView) -> None:
        """A heartbeat published the node again (capabilities changed, or back after a
        silence): its capabilities and drain are in force on this instance at once."""
        known = self.nodes.get(view.node_id)
        if known is not None:
            view = replace(known, channel=view.channel, caps=view.caps, drained=view.drained)
        self.note_registered(view)

    def note_drained(self, node_id: str) -> None:
        view = self.nodes.get(node_id)
        if view is not None:
            self.nodes[node_id] = self.noted[node_id] = replace(view, drained=True)

    def note_released(self, node_id: str, *, live: int) -> None:
        self.note_reserved(node_id, live=live)

    def note_reserved(self, node_id: str, *, live: int) -> None:
        view = self.nodes.get(node_id)
        if view is not None:
            self.nodes[node_id] = replace(view, live=live)

    def note_refusal(self, node_id: str, outcome: ReserveOutcome, *, live: int) -> None:
        self.exclusions[f"reserve_{outcome.value.lower()}"] += 1
        view = self.nodes.get(node_id)
        if view is None:
            return
        if outcome is ReserveOutcome.NOT_PRESENT:
            self.nodes.pop(node_id, None)
        elif outcome is ReserveOutcome.DRAINED:
            self.nodes[node_id] = replace(view, drained=True)
        else:
            self.nodes[node_id] = replace(view, live=max(live, view.live))


def _declared_services() -> set[str]:
    services: set[str] = set()
    for caps in Node.objects.filter(enabled=True).values_list("declared_capabilities", flat=True):
        for service in (caps or {}).get("services", []):
            if isinstance(service, dict) and isinstance(service.get("id"), str):
                services.add(service["id"])
    return services


def snapshot_get() -> NodeSnapshot:
    """The process's snapshot (a part of ``STATE``, shared by every consumer and view)."""
    return STATE.part(NodeSnapshot)


async def snapshot_refresh() -> None:
    snapshot = snapshot_get()
    await snapshot.refresh()
    if time.monotonic() - snapshot.catalog_refreshed_at > CATALOG_INTERVAL_S:
        await snapshot.refresh_catalog()
